"""How a job's state changes reach Redis: the record and its event in one transaction, the
worker's bookkeeping folded into it, and no more round trips than the change needs (each is a
process wake-up on a lone job's path). Real Redis, JobStore as the worker drives it."""

from __future__ import annotations

import json
import time

import pytest
from redis import ConnectionPool, Redis
from redis.connection import Connection

from generative_service import events, jobs
from generative_service.errors import NotFound
from generative_service.jobs import JobStore
from generative_service.queue import THROUGHPUT_BUCKET_S
from generative_service.schemas import BatchInfo, GenerationRequest, Stage, Timings


class CountingConnection(Connection):
    """Counts the writes to the socket: one per command sent alone, one per pipeline."""

    sent = 0

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url: str):
    pool = ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = Redis(connection_pool=pool)
    client.ping()  # the connection's handshake is not the code's round trips
    yield client
    client.close()
    pool.disconnect()


def round_trips(call):  # type: ignore[no-untyped-def]
    before = CountingConnection.sent
    result = call()
    return result, CountingConnection.sent - before


def test_a_lone_jobs_state_changes_write_record_and_event_together(counted, settings) -> None:
    store = JobStore(counted, settings)
    record, _ = store.create(GenerationRequest(prompt="a red house", steps=4, seed=1))
    job_id = record.id
    counted.set(settings.keys.cancel(job_id), "1")  # e.g. a cancel that came too late
    counted.script_load(jobs._CHANGE_SCRIPT)  # once per Redis
    running = settings.keys.running

    started, trips_started = round_trips(
        lambda: store.mark_started(
            job_id,
            batch=BatchInfo(id="batch_t", size=1),
            worker_id="w1",
            also=lambda pipe, _record: pipe.hset(running, job_id, json.dumps({"worker": "w1"})),
        )
    )
    _, trips_stage = round_trips(lambda: store.set_stage(job_id, Stage.safety))
    done, trips_done = round_trips(
        lambda: store.mark_succeeded(
            job_id, images=[], timings=Timings(inference_ms=1.0, safety_ms=1.0)
        )
    )

    # The claim reads the record (the gateway wrote it), then one script writes the record, its
    # event and the running entry if the record is still what was read (was WATCH, GET, then a
    # MULTI/EXEC: 3). From then on the worker knows the record it wrote: one round trip a change.
    assert (trips_started, trips_stage) == (2, 1)
    # ...and the terminal one, plus the metrics pipeline after the event (was 4).
    assert trips_done == 2
    assert started is not None and done is not None
    assert json.loads(counted.hget(running, job_id)) == {"worker": "w1"}
    assert not counted.exists(settings.keys.cancel(job_id))  # cleared with the terminal write
    finished = counted.get(store.queue.finished_key(int(time.time()) // THROUGHPUT_BUCKET_S))
    assert finished is not None and int(finished) >= 1  # counted for Retry-After

    streamed = [event for _, event in events.read(counted, settings.key_prefix, job_id)]
    assert [event.type for event in streamed] == ["queued", "started", "stage", "succeeded"]
    assert streamed[2].stage == Stage.safety
    # The terminal event carries the job as GET /v1/jobs/{id} shows it (no position, ETA 0).
    assert streamed[-1].job == store.to_resource(store.get(job_id)).model_dump(mode="json")
    assert streamed[-1].job["progress"]["eta_s"] == 0.0
    assert streamed[-1].job["queue_position"] is None


def test_a_canceled_or_ended_job_is_seen_in_one_read(redis, settings) -> None:
    store = JobStore(redis, settings)
    record, _ = store.create(GenerationRequest(prompt="a red house", steps=4, seed=2))
    store.mark_started(record.id, batch=BatchInfo(id="batch_t", size=1), worker_id="w1")
    assert store.ended_or_cancel_requested(record.id) is False
    redis.set(settings.keys.cancel(record.id), "1")
    assert store.ended_or_cancel_requested(record.id) is True
    redis.delete(settings.keys.cancel(record.id))
    store.mark_failed(record.id, code="generation_failed", message="boom")
    assert store.ended_or_cancel_requested(record.id) is True
    with pytest.raises(NotFound):
        store.ended_or_cancel_requested("job_0000000000000000000000")


def test_a_cancel_rings_the_running_jobs_bell_in_the_same_round_trip(counted, settings) -> None:
    """JobStore.cancel writes the flag and pushes the bell a running batch's poller blocks on,
    together; the job's terminal write removes both."""
    store = JobStore(counted, settings)
    record, _ = store.create(GenerationRequest(prompt="a red house", steps=4, seed=3))
    store.mark_started(record.id, batch=BatchInfo(id="batch_t", size=1), worker_id="w1")
    bell, flag = settings.keys.cancel_bell(record.id), settings.keys.cancel(record.id)
    _, trips = round_trips(lambda: store.cancel(record.id))
    assert counted.lrange(bell, 0, -1) == [b"1"] and counted.exists(flag)
    assert 0 < counted.ttl(bell) <= jobs.Ttl.CANCEL_BELL_S
    assert trips == 3  # read the record, flag and bell, read it back (as before the bell)
    store.mark_canceled(record.id)
    assert not counted.exists(bell) and not counted.exists(flag)


def test_a_step_time_is_folded_into_the_eta_average_in_one_round_trip(counted, settings) -> None:
    store = JobStore(counted, settings)
    store.queue.record_step_times(128, 128, [7.5])  # connects, loads the script (once per Redis)
    _, first = round_trips(lambda: store.queue.record_step_times(64, 64, [100.0]))
    _, second = round_trips(lambda: store.queue.record_step_times(64, 64, [50.0]))
    assert (first, second) == (1, 1)
    # 0.8 x old + 0.2 x new per pixel class, as ETAs (and Retry-After) read it.
    assert store.queue.step_times() == {"4096": pytest.approx(90.0), "16384": 7.5}
    assert store.queue.mean_step_ms(64, 64) == pytest.approx(90.0)
    # Several steps at once: each folded in turn, still one round trip.
    _, several = round_trips(lambda: store.queue.record_step_times(64, 64, [40.0, 140.0]))
    assert several == 1
    assert store.queue.mean_step_ms(64, 64) == pytest.approx(0.8 * (0.8 * 90 + 0.2 * 40) + 28)


def test_several_steps_of_one_job_are_one_round_trip_with_every_event(counted, settings) -> None:
    """The worker writes the steps gathered since its last write together: the record at the
    last step, an event for each (the first version sent a job's second step as a stale write
    and paid a second round trip for it)."""
    store = JobStore(counted, settings)
    record, _ = store.create(GenerationRequest(prompt="a red house", steps=4, seed=3))
    store.mark_started(record.id, batch=BatchInfo(id="batch_t", size=1), worker_id="w1")
    counted.script_load(jobs._PROGRESS_SCRIPT)
    _, trips = round_trips(
        lambda: store.report_progress_many([(record.id, s, 4, None) for s in (1, 2, 3)])
    )
    assert trips == 1
    assert store.get(record.id).progress.step == 3
    streamed = [e for _, e in events.read(counted, settings.key_prefix, record.id)]
    assert [(e.step, e.percent) for e in streamed if e.type == "progress"] == [
        (1, 25.0),
        (2, 50.0),
        (3, 75.0),
    ]


def test_a_batch_steps_progress_is_one_round_trip_and_never_overwrites_another_writer(
    counted, redis, settings
) -> None:
    """Each denoising step wrote WATCH, MGET, then a transaction (3 round trips); now one script
    call that writes a record only if it is still what this worker last wrote."""
    worker = JobStore(counted, settings)
    other = JobStore(redis, settings)  # the gateway, another worker: writes the worker never saw
    ids = [worker.create(GenerationRequest(prompt="a red house", steps=4, seed=k))[0].id for k in range(3)]  # fmt: skip
    for job_id in ids:
        worker.mark_started(job_id, batch=BatchInfo(id="batch_t", size=3), worker_id="w1")
    redis.script_load(jobs._PROGRESS_SCRIPT)  # once per Redis (the first call loads it)

    _, trips = round_trips(lambda: worker.report_progress_many([(j, 1, 4, None) for j in ids]))
    assert trips == 1
    assert [worker.get(j).progress.step for j in ids] == [1, 1, 1]

    other.set_stage(ids[1], Stage.denoising)  # unchanged stage: nothing written
    other.update(ids[1], lambda r: setattr(r, "worker_id", "w2"))  # a write the worker never saw
    other.mark_canceled(ids[2])  # ended behind the worker's back
    _, trips = round_trips(lambda: worker.report_progress_many([(j, 2, 4, None) for j in ids]))
    assert trips == 2  # the stale record came back with the reply and was updated from it
    first, second, third = (other.get(j) for j in ids)
    assert (first.progress.step, second.progress.step) == (2, 2)
    assert second.worker_id == "w2"  # the other writer's change is kept
    assert third.status.is_terminal and third.progress.step == 1
    steps = [
        [e.step for _, e in events.read(redis, settings.key_prefix, j) if e.type == "progress"]
        for j in ids
    ]
    assert steps == [[1, 2], [1, 2], [1]]

    _, trips = round_trips(lambda: worker.report_progress_many([(ids[2], 3, 4, None)]))
    assert trips == 1  # the ended job is forgotten: one read, nothing written
    assert other.get(ids[2]).progress.step == 1
    fresh = JobStore(counted, settings)  # a worker that did not start the jobs reads them first
    _, trips = round_trips(lambda: fresh.report_progress_many([(ids[0], 3, 4, None)]))
    assert trips == 2 and other.get(ids[0]).progress.step == 3


def test_the_records_a_store_remembers_stay_bounded(redis, settings) -> None:
    """Jobs a worker requeued for others, or stopped driving, must not pile up in its memory."""
    store = JobStore(redis, settings)
    for k in range(jobs.KNOWN_CACHE_MAX + 5):
        store._remember(f"job_{k}", "{}")
    assert len(store._known) <= jobs.KNOWN_CACHE_MAX
    store._remember("job_1", None)
    assert "job_1" not in store._known


def test_a_change_made_from_a_stale_copy_is_made_again_from_what_redis_holds(
    counted, redis, settings
) -> None:
    """A worker changes its job from the record it last wrote, in one round trip; when someone
    else wrote the record since, the script refuses, hands back the record as it is, and the
    change is made again from that: the other writer's change is kept, never overwritten."""
    worker = JobStore(counted, settings)
    other = JobStore(redis, settings)  # the gateway, the recovery loop
    counted.script_load(jobs._CHANGE_SCRIPT)
    ids = [worker.create(GenerationRequest(prompt="a red house", steps=4, seed=k))[0].id for k in range(3)]  # fmt: skip
    for job_id in ids:
        worker.mark_started(job_id, batch=BatchInfo(id="batch_t", size=3), worker_id="w1")

    other.update(ids[0], lambda r: setattr(r, "worker_id", "w2"))  # a write the worker never saw
    changed, trips = round_trips(lambda: worker.set_stage(ids[0], Stage.safety))
    assert trips == 2  # refused with the record as it is now, then applied to it
    assert changed is not None and changed.worker_id == "w2"
    now = other.get(ids[0])
    assert (now.worker_id, now.progress.stage) == ("w2", Stage.safety)

    other.mark_canceled(ids[1])  # ended behind the worker's back
    assert worker.set_stage(ids[1], Stage.safety) is None
    assert worker.mark_succeeded(ids[1], images=[], timings=Timings(inference_ms=1.0)) is None
    assert other.get(ids[1]).status == "canceled"
    types = [e.type for _, e in events.read(redis, settings.key_prefix, ids[1])]
    assert types == ["queued", "started", "canceled"]  # nothing of the worker's after the end

    # "Nothing to write" is decided on what Redis holds, not on the worker's copy.
    worker.set_stage(ids[2], Stage.safety)
    other.update(ids[2], lambda r: setattr(r.progress, "stage", Stage.denoising))
    worker.set_stage(ids[2], Stage.safety)
    assert other.get(ids[2]).progress.stage == Stage.safety
    redis.delete(settings.keys.job(ids[2]))
    with pytest.raises(NotFound):
        worker.set_stage(ids[2], Stage.storing)
    assert ids[2] not in worker._known


def test_a_batchs_bookkeeping_after_delivery_never_fails_the_batch(settings) -> None:
    """The batch's metrics and ETA folds run after its results are out (they ran on the progress
    publisher's thread, which logs a failure); Redis failing there must not raise out of the
    batch, and the bookkeeping queued after the failing call still runs."""
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.support import free_port
    from workers.runner import run_bookkeeping

    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    ran: list[str] = []
    calls = [
        lambda: JobStore(dead, settings).queue.record_step_times(64, 64, [10.0]),
        lambda: ran.append("metrics"),
    ]
    run_bookkeeping(calls)
    assert ran == ["metrics"] and calls == []
