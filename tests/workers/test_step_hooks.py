"""The step timer and cancel poller a running batch uses between denoising steps."""

from __future__ import annotations

import time

from workers.progress import PendingSteps, ProgressPublisher
from workers.step_hooks import CANCEL_POLL_S, CancelPoller, Outcome, StepTimer


def test_step_timer_skips_the_first_interval():
    timer = StepTimer()
    assert timer.tick(1) is None  # prompt encoding happens before step 1
    time.sleep(0.01)
    step_ms = timer.tick(2)
    assert step_ms is not None and step_ms >= 10.0
    assert timer.steps_s == [step_ms / 1000.0]


def test_cancel_poller_sees_a_flag_once_and_reports_it_once(redis, make_settings):
    keys = make_settings().keys
    seen: list[str] = []
    poll = CancelPoller(redis, ["a", "b"], [keys.cancel("a"), keys.cancel("b")],
                        aborted=lambda: False, on_cancel=seen.append)  # fmt: skip
    assert not poll("a")
    redis.set(keys.cancel("b"), "1")
    time.sleep(CANCEL_POLL_S * 2)
    assert poll("b") and not poll("a")
    time.sleep(CANCEL_POLL_S * 2)
    assert poll("b")
    assert seen == ["b"]
    redis.delete(keys.cancel("b"))


def test_abort_cancels_every_job(redis, make_settings):
    keys = make_settings().keys
    poll = CancelPoller(redis, ["a"], [keys.cancel("a")], aborted=lambda: True, on_cancel=print)
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
