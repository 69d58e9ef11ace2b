"""Progress-write benchmark (numbers, not a test): what a worker's step reporting costs the
denoising loop, in one process, on the embedded demo model and a real Redis.

One job at a time through `Engine.run`, the variants interleaved round by round:

- `engine alone`: no callbacks;
- `+ cancel MGET in the loop`: the cancel poller until this change: the denoising loop itself
  read the batch's cancel flags (one MGET at most every 25 ms);
- `+ cancel poller thread (25 ms MGET)`: the worker's CancelPoller until the cancel bell: a thread
  read the flags with one MGET every 25 ms, the loop only looked at what it read;
- `+ cancel poller thread (bell)`: the worker's CancelPoller now: the thread blocks on the batch's
  cancel bells (BLPOP, JobStore.cancel pushes one) and reads the flags when one rings or once a
  second;
- `worker before 6cbc58d`: MGET in the loop, and per step one progress script call and one
  step-time script call, each its own publisher wake-up;
- `worker at ac30603`: MGET in the loop, and PendingSteps: the steps gathered since the last
  write go out together, at most every PROGRESS_EVERY_S (and at once for the last step);
- `worker before the bell`: the 25 ms poller thread and PendingSteps;
- `worker now`: the bell-waiting poller thread and PendingSteps.

    .venv/bin/python benchmarks/bench_progress.py [--steps 20] [--rounds 15] [--no-report]

Writes the "progress" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import purge_prefix, write_section  # noqa: E402

SECTION = "progress"
PREFIX = "bench-progress:"
VARIANTS = (
    "engine alone",
    "+ cancel MGET in the loop",
    "+ cancel poller thread (25 ms MGET)",
    "+ cancel poller thread (bell)",
    "worker before 6cbc58d",
    "worker at ac30603",
    "worker before the bell",
    "worker now",
)
IN_LOOP = {VARIANTS[1], VARIANTS[4], VARIANTS[5]}
POLLING_THREAD = {VARIANTS[2], VARIANTS[6]}
PENDING_STEPS = {VARIANTS[5], VARIANTS[6], VARIANTS[7]}
POLL_EVERY_S = 0.025


class InLoopCancelPoll:
    """The cancel poller before it had a thread: the denoising loop's own MGET every 25 ms."""

    def __init__(self, redis, keys: list[str]) -> None:
        self.redis, self.keys, self.polled_at = redis, keys, 0.0

    def __call__(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self.polled_at >= POLL_EVERY_S:
            self.polled_at = now
            self.redis.mget(self.keys)
        return False


class PollingCancelThread:
    """The cancel poller before the bell: its thread read the flags every 25 ms."""

    def __init__(self, redis, keys: list[str]) -> None:
        self.redis, self.keys = redis, keys
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.redis.mget(self.keys)
        self._thread.start()
        return lambda job_id: False

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(POLL_EVERY_S):
            self.redis.mget(self.keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()

    import torch
    from redis import Redis

    from generative_service.engine import Engine, EngineJob
    from generative_service.jobs import JobStore
    from generative_service.schemas import GenerationRequest
    from generative_service.settings import Settings
    from workers.progress import PendingSteps, ProgressPublisher
    from workers.step_hooks import CancelPoller, StepTimer

    torch.set_num_threads(1)
    settings = Settings(key_prefix=PREFIX, model="demo")
    redis = Redis.from_url(args.redis_url)
    store = JobStore(redis, settings)
    engine = Engine.from_settings(settings)
    request = GenerationRequest(
        prompt="a red circle above a blue square", width=64, height=64, steps=args.steps, seed=1
    )
    engine.run([EngineJob("warmup", request)])
    publisher = ProgressPublisher()

    def one(variant: str) -> float:
        record, _ = store.create(request)
        job = EngineJob(record.id, record.request)
        kwargs: dict = {}
        poller = contextlib.nullcontext(None)
        if variant in IN_LOOP:
            kwargs["is_canceled"] = InLoopCancelPoll(redis, [store.keys.cancel(record.id)])
        elif variant in POLLING_THREAD:
            poller = PollingCancelThread(redis, [store.keys.cancel(record.id)])
        elif variant != VARIANTS[0]:
            poller = CancelPoller(
                redis,
                store.keys,
                [record.id],
                aborted=lambda: False,
                on_cancel=lambda _: None,
            )
        timer = StepTimer()
        if variant == VARIANTS[4]:

            def on_step(info) -> None:
                publisher.submit(
                    lambda: store.report_progress_many(
                        [(info.job_id, info.step, info.total_steps, None)]
                    )
                )
                step_ms = timer.tick(info.step)
                if step_ms is not None:
                    publisher.submit(lambda: store.queue.record_step_times(64, 64, [step_ms]))

            kwargs["on_step"] = on_step
        elif variant in PENDING_STEPS:
            steps = PendingSteps(
                publisher,
                lambda reports, times: (
                    store.report_progress_many(reports),
                    store.queue.record_step_times(64, 64, times),
                ),
            )
            kwargs["on_step"] = lambda info: steps.add(
                (info.job_id, info.step, info.total_steps, None),
                timer.tick(info.step),
                last=info.step >= info.total_steps,
            )
        started = time.perf_counter()
        with poller as is_canceled:
            if is_canceled is not None:
                kwargs["is_canceled"] = is_canceled
            engine.run([job], **kwargs)
        publisher.flush()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    load = os.getloadavg()[0]
    try:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                times[variant].append(one(variant))
    finally:
        publisher.close()
        purge_prefix(redis, PREFIX)
    base = statistics.median(times[VARIANTS[0]])
    lines = [
        "## Progress writes in the denoising loop — `benchmarks/bench_progress.py`",
        "",
        f"Embedded demo model, 64x64, {args.steps} steps, one job per `Engine.run`, torch threads 1; "
        f"{platform.machine()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at the start; "
        f"{args.rounds} rounds, the variants interleaved; the publisher flushed inside the timing.",
        "",
        "| variant | p50 ms | min ms | p50 minus engine alone |",
        "|---|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        p50 = statistics.median(times[variant])
        lines.append(
            f"| {variant} | {p50 * 1000:.1f} | {min(times[variant]) * 1000:.1f} | "
            f"{(p50 - base) * 1000:+.1f} |"
        )
    body = "\n".join(lines)
    print(body)
    if not args.no_report:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
