"""The step timer and cancel poller a running batch uses between denoising steps."""

from __future__ import annotations

import time

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
