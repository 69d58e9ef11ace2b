"""The step timer and cancel poller a running batch uses between denoising steps."""

from __future__ import annotations

import threading
import time

from redis import Redis

from workers import step_hooks
from workers.progress import PendingSteps, ProgressPublisher
from workers.step_hooks import CancelPoller, Outcome, StepTimer

STEP_S = 0.025  # a denoising step, for the loops below


def test_step_timer_skips_the_first_interval():
    timer = StepTimer()
    assert timer.tick(1) is None  # prompt encoding happens before step 1
    time.sleep(0.01)
    step_ms = timer.tick(2)
    assert step_ms is not None and step_ms >= 10.0
    assert timer.steps_s == [step_ms / 1000.0]


def _ring(redis, keys, job_id: str) -> None:
    """What JobStore.cancel writes for a running job: the flag and its bell."""
    redis.set(keys.cancel(job_id), "1")
    redis.rpush(keys.cancel_bell(job_id), "1")


def _poller(redis, keys, job_ids, **kwargs) -> CancelPoller:
    kwargs.setdefault("aborted", lambda: False)
    kwargs.setdefault("on_cancel", lambda _: None)
    return CancelPoller(redis, keys, job_ids, **kwargs)


def _wait_for(poll, job_id: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not poll(job_id) and time.monotonic() < deadline:
        time.sleep(STEP_S)
    return poll(job_id)


def test_cancel_poller_sees_a_flag_once_and_reports_it_once(redis, make_settings):
    keys = make_settings().keys
    seen: list[str] = []
    with _poller(redis, keys, ["a", "b"], on_cancel=seen.append) as poll:
        assert not poll("a")
        _ring(redis, keys, "b")
        assert _wait_for(poll, "b") and not poll("a")
        time.sleep(STEP_S * 2)
        assert poll("b")
    assert seen == ["b"]
    redis.delete(keys.cancel("b"), keys.cancel_bell("b"))


def test_a_job_canceled_before_the_batch_starts_is_canceled_at_the_first_step(redis, make_settings):
    keys = make_settings().keys
    redis.set(keys.cancel("a"), "1")
    try:
        with _poller(redis, keys, ["a"]) as poll:
            assert poll("a")
    finally:
        redis.delete(keys.cancel("a"))


def test_the_poller_waits_on_the_bell_instead_of_polling(redis, make_settings, monkeypatch):
    """Between cancels the poller sends Redis nothing but its blocked wait: no MGET while the
    batch runs (before, one every 25 ms, 40 a second per busy worker, each taking the GIL from the
    denoising loop); the bell JobStore.cancel rings wakes it at once."""
    monkeypatch.setattr(step_hooks, "CANCEL_WAIT_S", 30.0)  # only the bell can wake it here
    keys = make_settings().keys
    client = _ThreadRecordingRedis(connection_pool=redis.connection_pool)
    with _poller(client, keys, ["a", "b"]) as poll:
        entered = len(client.mget_threads)  # the one read on entering, before step 1
        for _ in range(20):  # half a second of steps
            assert not poll("a")
            time.sleep(STEP_S)
        assert len(client.mget_threads) == entered
        redis.set(keys.cancel("a"), "1")  # a flag without its bell waits for CANCEL_WAIT_S...
        time.sleep(STEP_S * 8)
        assert not poll("a")
        redis.rpush(keys.cancel_bell("b"), "1")  # ...any bell of the batch reads every flag
        assert _wait_for(poll, "a")
        assert len(client.mget_threads) == entered + 1
    redis.delete(keys.cancel("a"))


def test_a_flag_set_without_its_bell_is_still_seen(redis, make_settings, monkeypatch):
    """A bell can be lost (a master failed over between the flag and the waiter's read): the
    poller reads the flags every CANCEL_WAIT_S anyway."""
    monkeypatch.setattr(step_hooks, "CANCEL_WAIT_S", 0.2)
    keys = make_settings().keys
    with _poller(redis, keys, ["a"]) as poll:
        assert not poll("a")
        redis.set(keys.cancel("a"), "1")
        assert _wait_for(poll, "a")
    redis.delete(keys.cancel("a"))


class _ThreadRecordingRedis(Redis):
    """A real Redis client that notes which thread each MGET ran on."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mget_threads: list[str] = []

    def mget(self, *args, **kwargs):
        self.mget_threads.append(threading.current_thread().name)
        return super().mget(*args, **kwargs)


def test_the_denoising_loop_never_waits_on_redis_for_cancel_flags(redis, make_settings):
    """The loop asks at every step; the flags are read on the poller's own thread (before, the
    loop's own MGET every 25 ms put a Redis round trip between denoising steps)."""
    keys = make_settings().keys
    client = _ThreadRecordingRedis(connection_pool=redis.connection_pool)
    seen: list[str] = []
    loop_thread = threading.current_thread().name
    with _poller(client, keys, ["a"], on_cancel=seen.append) as poll:
        calls_before = len(client.mget_threads)  # the one read on entering, before step 1
        for _ in range(10):  # steps
            assert not poll("a")
            time.sleep(STEP_S)
        _ring(redis, keys, "a")
        assert _wait_for(poll, "a") and seen == ["a"]
    redis.delete(keys.cancel("a"), keys.cancel_bell("a"))
    polled_in_loop = [t for t in client.mget_threads[calls_before:] if t == loop_thread]
    assert polled_in_loop == []
    assert len(client.mget_threads) > calls_before  # the thread did read the flags


def test_abort_cancels_every_job(redis, make_settings):
    keys = make_settings().keys
    poll = _poller(redis, keys, ["a"], aborted=lambda: True, on_cancel=print)
    assert poll("a")
    assert f"job.{Outcome.handed_back}" == "job.handed_back"


def test_pending_steps_write_every_step_a_few_at_a_time_in_order():
    """A model stepping faster than PROGRESS_EVERY_S: one write per interval (plus the last
    step's), and every step's report in it, in order; nothing left behind after submit()."""
    publisher = ProgressPublisher()
    writes: list[tuple[list[int], list[float]]] = []
    steps: PendingSteps[int] = PendingSteps(
        publisher, lambda reports, times: writes.append((reports, times)), every_s=3600.0
    )
    try:
        for step in range(1, 6):
            steps.add(step, float(step) if step > 1 else None, last=step == 5)
        steps.add(99)  # reported after the last write was asked for: only submit() writes it
        publisher.flush()
        written = [report for reports, _ in writes for report in reports]
        assert written[:5] == [1, 2, 3, 4, 5]
        assert len(writes) <= 2  # the first step's write, then the last step's (not one per step)
        steps.submit()
        publisher.flush()
        assert [report for reports, _ in writes for report in reports] == [1, 2, 3, 4, 5, 99]
        assert [t for _, times in writes for t in times] == [2.0, 3.0, 4.0, 5.0]
    finally:
        publisher.close()
