"""Service benchmark (numbers, not a test): what the queue, worker and gateway add around the engine.

Measures, on the tiny model with a real Redis, a real gateway (`gensvc api`) and one real GPU
worker process (`python -m workers.gpu_worker`):

1. Service overhead: submit -> terminal SSE event, against a direct `Engine.run` of the same job
   in this process (p50, goal <= 1.05x and <= 15 ms), with the default batch window and with
   GENSVC_BATCH_WINDOW_MS=0, and where the extra time goes (job timings).
2. Batching gain: 4 compatible jobs submitted at once vs the same 4 one after another (images/s).
3. Gateway submit throughput and latency (p50/p99) with 10 and 100 concurrent clients (no worker
   running, so only the gateway and Redis are measured).

    .venv/bin/python benchmarks/bench_service.py [--runs 10] [--steps 10] [--threads 1] [--no-report]

Writes the "service" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import free_port, http_ok, pct, purge_prefix, wait_until, write_section  # noqa: E402

SECTION = "service"


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


# --- processes ------------------------------------------------------------------------------------
class Service:
    """A gateway and GPU workers as child processes on one Settings."""

    def __init__(self, settings, *, threads: int, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")
        }
        self.env.update(settings.as_env())
        self.env.update(
            PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), GENSVC_LOG_LEVEL="WARNING"
        )
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], **env: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.processes[name] = subprocess.Popen(
            argv, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def start_gateway(self) -> None:
        self.start(
            "gateway",
            [sys.executable, "-m", "generative_service.cli", "api", "--port", str(self.port)],
        )
        wait_until(lambda: http_ok(f"{self.base_url}/healthz"), 60, "gateway")

    def start_worker(self, name: str = "worker", **env: str) -> None:
        self.start(name, [sys.executable, "-m", "workers.gpu_worker", "--worker-id", name], **env)
        wait_until(lambda: http_ok(f"{self.base_url}/readyz"), 600, "worker")

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


# --- 1. overhead ---------------------------------------------------------------------------------
def job_body(steps: int, seed: int, prompt: str = "a red house") -> dict:
    return {"prompt": prompt, "steps": steps, "seed": seed, "width": 64, "height": 64}


def direct_engine(settings, *, steps: int, runs: int) -> list[float]:
    """Seconds per `Engine.run` of one job, in this process (the baseline)."""
    from generative_service.engine import Engine, EngineJob
    from generative_service.schemas import GenerationRequest

    engine = Engine.from_settings(settings)
    request = GenerationRequest(**job_body(steps, 1))
    engine.run([EngineJob("warmup", request)])
    times = []
    for i in range(runs):
        job = EngineJob(f"direct{i}", request.model_copy(update={"seed": 1000 + i}))
        started = time.perf_counter()
        engine.run([job])
        times.append(time.perf_counter() - started)
    return times


def through_service(client, *, steps: int, runs: int) -> tuple[list[float], list]:
    """Seconds from submit to the terminal SSE event, one job at a time; and the final jobs."""
    times, finished = [], []
    for i in range(runs + 2):
        started = time.perf_counter()
        job = client.submit(job_body(steps, 2000 + i))
        for _, event in client.events(job.id):
            if event.is_terminal:
                break
        elapsed = time.perf_counter() - started
        if i >= 2:  # the first two warm the worker (prompt cache, allocator)
            times.append(elapsed)
            finished.append(client.get(job.id))
    return times, finished


def breakdown(jobs: list) -> dict[str, float]:
    """Median job timings (ms) of the measured jobs."""
    fields = ("queued_ms", "inference_ms", "safety_ms", "storing_ms", "total_ms")
    return {
        name: statistics.median(getattr(job.timings, name) or 0.0 for job in jobs)
        for name in fields
    }


# --- 2. batching ---------------------------------------------------------------------------------
def batching_gain(client, store, *, steps: int, rounds: int) -> dict[str, float]:
    """Images/s of 4 jobs one after another vs 4 submitted at once (medians over rounds).

    Completion is read from the job records (polled in Redis), not over SSE, so the number is
    the queue and worker's throughput, not the gateway's event delivery.
    """
    from concurrent.futures import ThreadPoolExecutor

    def finish(job_id: str):
        while not (record := store.get(job_id)).status.is_terminal:
            time.sleep(0.002)
        return record

    sequential, together, sizes = [], [], []
    for r in range(rounds):
        started = time.perf_counter()
        for i in range(4):
            finish(client.submit(job_body(steps, 10 * r + i, f"job {i}")).id)
        sequential.append(4 / (time.perf_counter() - started))
        started = time.perf_counter()
        bodies = [job_body(steps, 10 * r + i, f"job {i}") for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda body: client.submit(body).id, bodies))
        done = [finish(job_id) for job_id in ids]
        together.append(4 / (time.perf_counter() - started))
        sizes.append(max(job.batch.size for job in done))
    return {
        "sequential": statistics.median(sequential),
        "together": statistics.median(together),
        "batch_size": statistics.median(sizes),
    }


# --- 3. gateway submit throughput -------------------------------------------------------------------
async def submit_load(base_url: str, *, clients: int, total: int, steps: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    remaining = total

    async def one_client(http: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await http.post("/v1/jobs", json=job_body(steps, remaining))
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 202

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    return {"clients": clients, "requests": total, "per_s": total / wall, "p50": pct(latencies, 0.5),
            "p99": pct(latencies, 0.99), "errors": errors}  # fmt: skip


# --- report ------------------------------------------------------------------------------------------
def render(args, engine_s, runs_by_window, gains, load) -> str:
    base = statistics.median(engine_s)
    lines = [
        "## Service (gateway + Redis + one GPU worker, tiny model on CPU) — `benchmarks/bench_service.py`",
        "",
        f"64x64, {args.steps} steps, DPM++ 2M Karras; torch threads {args.threads}; {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs shared with other work (expect noise). {args.runs} jobs per row.",
        "",
        '**Overhead**: one job at a time, vs `Engine.run` of the same job in-process. "terminal SSE event" is what a '
        'client sees (gateway SSE delivery included); "terminal state recorded" is the job\'s own `total_ms` (submit -> '
        "the worker wrote the final state and event), i.e. queue + worker without the gateway's delivery.",
        "",
        "| path | p50 ms | p90 ms | vs engine p50 | overhead p50 ms |",
        "|---|---:|---:|---:|---:|",
        f"| direct `Engine.run` | {ms(base)} | {ms(pct(engine_s, 0.9))} | 1.00x | 0 |",
    ]
    for window, (times, jobs) in runs_by_window.items():
        recorded = [job.timings.total_ms / 1000.0 for job in jobs]
        for label, values in (("terminal SSE event", times), ("terminal state recorded", recorded)):
            p50 = statistics.median(values)
            lines.append(
                f"| service, window {window} ms, submit -> {label} | {ms(p50)} | {ms(pct(values, 0.9))} | {p50 / base:.2f}x | {ms(p50 - base)} |"
            )
    lines += ["", "Where the time goes (median job timings, ms): queued = submit -> worker start (includes the batch window), "
              "inference = the engine inside the worker, safety = NSFW filter, storing = encode + write.", "",
              "| window | queued | inference | safety | storing | total (record) |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for window, (_, jobs) in runs_by_window.items():
        b = breakdown(jobs)
        lines.append(
            f"| {window} ms | {b['queued_ms']:.1f} | {b['inference_ms']:.1f} | {b['safety_ms']:.1f} | {b['storing_ms']:.1f} | {b['total_ms']:.1f} |"
        )
    lines += [
        "",
        "**Batching gain**: 4 compatible jobs submitted at once (one client each) vs the same 4 one after another (the "
        f"next submitted when the previous one's record is terminal), median of {args.rounds} rounds.",
        "",
        "| window | one after another, images / s | at once, images / s | batch size seen | gain |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {window} ms | {g['sequential']:.2f} | {g['together']:.2f} | {g['batch_size']:.0f} | {g['together'] / g['sequential']:.2f}x |"
            for window, g in gains.items()
        ),
        "",
        "**Gateway submit** (POST /v1/jobs -> 202; no worker running, jobs only queue).",
        "",
        "| concurrent clients | requests | submits / s | p50 ms | p99 ms | non-202 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in load:
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['per_s']:.0f} | {ms(row['p50'])} | {ms(row['p99'])} | {row['errors']} |"
        )
    return "\n".join(lines) + "\n" + NOTES + delivery_note(runs_by_window)


def delivery_note(runs_by_window: dict) -> str:
    """Say so when the gateway's SSE delivery, not the queue or worker, dominates the overhead."""
    gaps = [
        statistics.median(times) - statistics.median(job.timings.total_ms / 1000.0 for job in jobs)
        for times, jobs in runs_by_window.values()
    ]
    gap = statistics.median(gaps)
    if gap < 0.1:
        return ""
    return (
        f"\nMeasured here: the terminal SSE event reached the client {ms(gap)} ms (median) after the worker "
        "had written it. That delay is in the gateway's SSE delivery, not in the queue or the worker "
        '(see the "terminal state recorded" rows).\n'
    )


NOTES = """
Reading it: the tiny model's engine call takes about 0.1 s on this CPU, so per-job costs that a
bare `Engine.run` does not have weigh heavily in the ratio: the NSFW filter (open_nsfw on CPU,
~20 ms), a record + event write per denoising step (~1.5 ms of CPU each here; written from a
background thread, but sharing the GIL with the tiny model's Python-bound loop), encode + write
(~1 ms), dispatch (submit -> worker start, ~6 ms with no window), and with the default window up
to BATCH_WINDOW_MS of waiting for batch-mates when the queue is idle (the window counts from the
job's submission, so a job that already waited in a busy queue does not wait again). With real
SDXL on a GPU (seconds per job) the same fixed costs are a few percent, which meets the 1.05x
goal; the 15 ms absolute goal also needs BATCH_WINDOW_MS=0 (the default 20 ms window alone
exceeds it for a lone job) and leaves no room for the NSFW filter on CPU. Batches still form
with no window from whatever is queued when the worker takes a job, i.e. under load.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in this process and the worker"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print only; leave REPORT.md alone"
    )
    args = parser.parse_args(argv)

    import torch
    from redis import Redis

    from generative_service.client import Client
    from generative_service.jobs import JobStore
    from generative_service.settings import Settings

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    settings = Settings(model="tiny", device="cpu", key_prefix=f"bench_svc_{secrets.token_hex(4)}",
                        storage_dir=tmp / "images", max_queued=1_000_000, worker_heartbeat_s=2, worker_dead_after_s=30)  # fmt: skip
    redis = Redis.from_url(settings.redis_url)
    service = Service(settings, threads=args.threads, log_dir=tmp)
    try:
        engine_s = direct_engine(settings, steps=args.steps, runs=args.runs)
        print(f"direct engine p50 {ms(statistics.median(engine_s))} ms")
        service.start_gateway()
        runs_by_window, gains = {}, {}
        for window in (settings.batch_window_ms, 0):
            service.start_worker(GENSVC_BATCH_WINDOW_MS=str(window))
            with Client(service.base_url, timeout=60) as client:
                runs_by_window[window] = through_service(client, steps=args.steps, runs=args.runs)
                print(
                    f"service window={window} p50 {ms(statistics.median(runs_by_window[window][0]))} ms"
                )
                gains[window] = batching_gain(
                    client, JobStore(redis, settings), steps=args.steps, rounds=args.rounds
                )
                print(f"batching {gains[window]}")
            service.stop("worker")
        load = [
            asyncio.run(
                submit_load(service.base_url, clients=c, total=max(300, 5 * c), steps=args.steps)
            )
            for c in (10, 100)
        ]
        print(f"submit load {load}")
    finally:
        service.stop_all()
        purge_prefix(redis, settings.key_prefix)
    text = render(args, engine_s, runs_by_window, gains, load)
    print(text)
    if not args.no_report:
        write_section(SECTION, text)
        print(f"wrote the {SECTION} section of benchmarks/REPORT.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
