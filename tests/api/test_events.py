"""SSE: replay, resume after Last-Event-ID with nothing lost or repeated, keep-alives, closing
after the terminal event. Events are driven through JobStore transitions (no worker)."""

from __future__ import annotations

import json
import threading
import time

from api_helpers import check_error

from generative_service import events

OK = {"prompt": "a red circle above a blue square", "steps": 4}


def parse_sse(text: str) -> list[dict]:
    """Frames of an SSE body: [{"id", "event", "data"}]; comments as {"comment": ...}."""
    frames = []
    for block in text.split("\n\n"):
        frame: dict = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frames.append({"comment": line[1:].strip()})
                continue
            name, _, value = line.partition(": ")
            if name in ("id", "event"):
                frame[name] = value
            elif name == "data":
                frame["data"] = json.loads(value)
        if "data" in frame:
            frames.append(frame)
    return frames


def event_frames(text: str) -> list[dict]:
    return [frame for frame in parse_sse(text) if "data" in frame]


def finish_later(fake_worker, job_id: str, *, delay_s: float, before_end=None) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        if before_end:
            before_end()
        fake_worker.progress(job_id, 4)
        fake_worker.succeed(job_id)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_stream_of_an_ended_job_replays_everything_and_closes(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.run(job_id, steps=4)
    response = api_client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = event_frames(response.text)
    types = [frame["event"] for frame in frames]
    assert types == [
        "queued",
        "started",
        "progress",
        "progress",
        "progress",
        "progress",
        "stage",
        "succeeded",
    ]
    assert all(
        frame["data"]["type"] == frame["event"]
        and frame["data"]["job_id"] == job_id
        and "at" in frame["data"]
        for frame in frames
    )
    assert [frame["data"]["step"] for frame in frames if frame["event"] == "progress"] == [
        1,
        2,
        3,
        4,
    ]
    assert frames[-1]["data"]["job"]["status"] == "succeeded"
    assert len({frame["id"] for frame in frames}) == len(frames)


def test_live_stream_follows_until_the_terminal_event(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.start(job_id)
    thread = finish_later(fake_worker, job_id, delay_s=0.3)
    response = api_client.get(f"/v1/jobs/{job_id}/events")  # returns once the stream closed
    thread.join()
    assert [frame["event"] for frame in event_frames(response.text)][-1] == "succeeded"
    assert (
        len([frame for frame in event_frames(response.text) if frame["event"] == "progress"]) == 4
    )


def test_resume_after_last_event_id_loses_and_repeats_nothing(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.start(job_id)
    fake_worker.store.report_progress(job_id, 1, 4)
    so_far = events.read(fake_worker.store.redis, fake_worker.store.prefix, job_id)
    assert [event.type for _, event in so_far] == ["queued", "started", "progress"]
    last_seen = so_far[1][0]  # the client saw `queued` and `started`, then lost its connection
    thread = finish_later(fake_worker, job_id, delay_s=0.3)
    resumed = event_frames(
        api_client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last_seen}).text
    )
    thread.join()
    everything = event_frames(api_client.get(f"/v1/jobs/{job_id}/events").text)
    assert [frame["id"] for frame in everything[:2] + resumed] == [
        frame["id"] for frame in everything
    ]
    assert resumed[0]["data"] == {
        "type": "progress",
        "job_id": job_id,
        "at": resumed[0]["data"]["at"],
        "step": 1,
        "total_steps": 4,
        "percent": 25.0,
    }
    assert resumed[-1]["event"] == "succeeded"


def test_resume_with_query_parameter(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.run(job_id, steps=4)
    everything = event_frames(api_client.get(f"/v1/jobs/{job_id}/events").text)
    middle = everything[3]["id"]
    resumed = event_frames(api_client.get(f"/v1/jobs/{job_id}/events?last_event_id={middle}").text)
    assert [frame["id"] for frame in resumed] == [frame["id"] for frame in everything[4:]]
    # The header wins over the query (a browser's EventSource updates only the header).
    last = everything[-1]["id"]
    via_header = api_client.get(
        f"/v1/jobs/{job_id}/events?last_event_id={middle}",
        headers={"Last-Event-ID": everything[-2]["id"]},
    )
    assert [frame["id"] for frame in event_frames(via_header.text)] == [last]


def test_resume_after_the_terminal_event_is_204_no_content(api_client, fake_worker):
    # 204 is how the HTML standard tells an EventSource to stop reconnecting.
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.run(job_id)
    last = event_frames(api_client.get(f"/v1/jobs/{job_id}/events").text)[-1]["id"]
    response = api_client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last})
    assert response.status_code == 204 and response.content == b""


def test_keep_alive_comments_while_the_job_waits(api_client, fake_worker, settings):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    thread = finish_later(
        fake_worker,
        job_id,
        delay_s=settings.sse_keepalive_s * 4,
        before_end=lambda: fake_worker.start(job_id),
    )
    response = api_client.get(f"/v1/jobs/{job_id}/events")
    thread.join()
    frames = parse_sse(response.text)
    assert {"comment": "keep-alive"} in frames
    assert [frame["event"] for frame in frames if "event" in frame][-1] == "succeeded"


def test_canceled_job_stream_ends_with_canceled(api_client):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    api_client.post(f"/v1/jobs/{job_id}/cancel")
    frames = event_frames(api_client.get(f"/v1/jobs/{job_id}/events").text)
    assert [frame["event"] for frame in frames] == ["queued", "canceled"]
    assert (
        frames[-1]["data"]["error"]["code"] == "canceled"
        and frames[-1]["data"]["job"]["status"] == "canceled"
    )


def test_stream_of_unknown_job_is_404(api_client):
    check_error(api_client.get("/v1/jobs/job_0123456789abcdef01234567/events"), 404, "not_found")


def test_a_live_stream_reads_each_event_once_and_not_the_record(
    api_client, fake_worker, redis, settings
):
    """Per event the gateway read the stream twice and the job record once (XRANGE, an empty
    XRANGE, GET): the hub wakes a stream for anything appended after its last read, so one
    XRANGE per wake-up is enough. Counted with MONITOR on the real Redis."""
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.start(job_id)
    steps = 10
    seen: list[tuple[int, str]] = []  # (client port, command)
    watching = threading.Event()

    def monitor() -> None:
        with redis.monitor() as m:
            watching.set()
            for command in m.listen():
                text = command["command"]
                if job_id in text:
                    seen.append((int(command.get("client_port") or 0), text))
                if text.startswith("SET") and "stop-monitor" in text:
                    return

    def emit() -> None:
        time.sleep(0.3)  # the client is following by now
        for step in range(1, steps + 1):
            fake_worker.store.report_progress(job_id, step, steps)
            time.sleep(0.08)  # one event per wake-up
        fake_worker.succeed(job_id)

    listener = threading.Thread(target=monitor, daemon=True)
    listener.start()
    assert watching.wait(5)
    writer = threading.Thread(target=emit)
    writer.start()
    response = api_client.get(f"/v1/jobs/{job_id}/events")
    writer.join()
    redis.set("stop-monitor", "1", ex=5)
    listener.join(5)
    frames = event_frames(response.text)
    assert [f["event"] for f in frames].count("progress") == steps
    assert frames[-1]["event"] == "succeeded"
    reads = [
        (port, c) for port, c in seen if c.startswith(f"XRANGE {settings.keys.events(job_id)}")
    ]
    gateway = {port for port, _ in reads}  # the connections the stream reads on
    record = f"GET {settings.keys.job(job_id)}"
    record_reads = [c for port, c in seen if port in gateway and c.startswith(record)]
    # One read per wake-up (each progress event, the stage and terminal events, the first replay)
    # and a few spare; the old loop made ~2 per event plus a GET of the record per event.
    assert len(reads) <= steps + 6, reads
    assert len(record_reads) <= 2, record_reads
