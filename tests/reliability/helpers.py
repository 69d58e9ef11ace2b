"""Shared helpers of the reliability suite: the common error shape, hostile payload builders,
SSE parsing and job polling against a running service."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Callable

import httpx
from support import check_error, free_port  # noqa: F401 - the reliability tests import them from here


def png_declaring(width: int, height: int) -> bytes:
    """A structurally valid PNG whose header declares `width`x`height` but holds almost no data:
    what a decompression bomb looks like to a decoder that trusts the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse_sse(text: str) -> list[dict]:
    """SSE text -> frames `{id, event, data}` (comments and `retry:` dropped)."""
    frames = []
    for block in text.split("\n\n"):
        frame: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(":")
            frame[name] = value[1:] if value.startswith(" ") else value
        if "event" in frame:
            frame["data"] = json.loads(frame["data"])
            frames.append(frame)
    return frames


def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float = 60.0,
    what: str = "condition",
    every: float = 0.2,
) -> object:
    """Poll `predicate` until truthy; raise AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def get_job(base_url: str, job_id: str, **kwargs) -> dict:
    response = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def wait_terminal(base_url: str, job_ids: list[str], *, timeout: float = 240.0) -> list[dict]:
    """Poll the gateway until every job is terminal; return the job resources."""

    def all_done():
        jobs = [get_job(base_url, job_id) for job_id in job_ids]
        return (
            jobs
            if all(job["status"] in ("succeeded", "failed", "canceled") for job in jobs)
            else None
        )

    return wait_for(all_done, timeout=timeout, what=f"jobs {job_ids} to end", every=0.5)  # type: ignore[return-value]


# Job bodies the fault tests share: one that ends at once, one long enough to interrupt.
QUICK = {"prompt": "two green triangles", "steps": 2}
# Seconds of work even on a quiet machine (64 px x 16 steps ends in well under a second there,
# before a test can act on it "mid-job").
LONG = {"prompt": "a red circle above a blue square", "steps": 150, "width": 128, "height": 128}
TERMINAL = ("succeeded", "failed", "canceled")


def read_stream(base_url: str, job_id: str, *, after: str | None = None, stop: Callable[[dict], bool] | None = None,
                timeout: float = 240.0, on_open: Callable[[], object] | None = None) -> tuple[list[dict], bool]:  # fmt: skip
    """Read the job's SSE stream once. Returns (frames, ended): `ended` is True when the server
    closed the stream after a terminal event. `stop(frame)` true: drop the connection there.
    A broken connection (gateway gone) just ends the read."""
    headers = {"Last-Event-ID": after} if after else {}
    frames: list[dict] = []
    buffer = ""
    try:
        with httpx.stream(
            "GET",
            f"{base_url}/v1/jobs/{job_id}/events",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5),
        ) as response:
            assert response.status_code == 200, response.read()
            if on_open is not None:
                on_open()
            for chunk in response.iter_text():
                buffer += chunk
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    frames.extend(parse_sse(block + "\n\n"))
                    if frames and stop is not None and stop(frames[-1]):
                        return frames, False
    except (httpx.TransportError, httpx.StreamError):
        pass
    return frames, bool(frames) and frames[-1]["event"] in TERMINAL


def follow_to_end(
    base_url: str,
    job_id: str,
    *,
    timeout: float = 240.0,
    on_open: Callable[[], object] | None = None,
) -> tuple[list[dict], int]:
    """Follow the job's SSE stream to its terminal event, reconnecting with Last-Event-ID whenever
    the stream breaks (gateway restart, Redis outage). Returns (frames, reconnects)."""
    import time as _time

    frames: list[dict] = []
    reconnects = -1
    deadline = _time.monotonic() + timeout
    while _time.monotonic() < deadline:
        reconnects += 1
        try:
            got, ended = read_stream(
                base_url,
                job_id,
                after=frames[-1]["id"] if frames else None,
                timeout=timeout,
                on_open=on_open,
            )
        except (AssertionError, httpx.TransportError):
            got, ended = [], False  # gateway not back yet, or answering 503 while Redis is away
        frames.extend(got)
        if ended:
            return frames, reconnects
        _time.sleep(0.5)
    raise AssertionError(
        f"no terminal event for {job_id} within {timeout:.0f} s ({len(frames)} frames)"
    )


class Follower:
    """Follows one job's SSE stream in a background thread (see `follow_to_end` / `read_stream`)."""

    def __init__(
        self, base_url: str, job_id: str, *, reconnect: bool = True, timeout: float = 240.0
    ) -> None:
        import threading

        self.frames: list[dict] = []
        self.reconnects = 0
        self.ended = False
        self.error: BaseException | None = None
        self.opened = threading.Event()  # set once the gateway answered 200 and streams

        def run() -> None:
            try:
                if reconnect:
                    self.frames, self.reconnects = follow_to_end(
                        base_url, job_id, timeout=timeout, on_open=self.opened.set
                    )
                    self.ended = True
                else:
                    self.frames, self.ended = read_stream(
                        base_url, job_id, timeout=timeout, on_open=self.opened.set
                    )
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True, name=f"sse-{job_id}")
        self.thread.start()

    def join(self, timeout: float) -> Follower:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"SSE follower still reading after {timeout:.0f} s"
        if self.error is not None:
            raise self.error
        return self


def check_stream(frames: list[dict], job_id: str) -> str:
    """Nothing repeated, ids increasing, exactly one terminal event and it is last. Returns its type."""
    ids = [frame["id"] for frame in frames]
    assert len(ids) == len(set(ids)), f"repeated events: {ids}"
    keys = [tuple(int(part) for part in event_id.split("-")) for event_id in ids]
    assert keys == sorted(keys), f"events out of order: {ids}"
    assert all(frame["data"]["job_id"] == job_id for frame in frames)
    terminal = [frame["event"] for frame in frames if frame["event"] in TERMINAL]
    assert len(terminal) == 1 and frames[-1]["event"] == terminal[0], [
        frame["event"] for frame in frames
    ]
    return terminal[0]


class WebhookReceiver:
    """A local HTTP receiver whose reply depends on its mode: `ok` (204), `error` (500 for the
    first `failures` requests, then 204) or `slow` (sleeps `delay_s`, then 204). Keeps every request."""

    def __init__(self, mode: str = "ok", *, failures: int = 2, delay_s: float = 3.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.mode, self.failures, self.delay_s = mode, failures, delay_s
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 204
                if receiver.mode == "error" and len(receiver.requests) <= receiver.failures:
                    status = 500
                if receiver.mode == "slow":
                    time.sleep(receiver.delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender timed out and hung up first

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
