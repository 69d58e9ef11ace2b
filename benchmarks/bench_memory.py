"""Memory over many jobs (numbers, not a test): gateway and worker RSS, Redis bytes per finished job.

A private redis-server, `gensvc api` and one GPU worker (`python -m workers.gpu_worker`) on the
tiny model (64x64, 1 step, up to 16 images per batch; `--safety off` skips the NSFW filter, for
speed on a CPU). Jobs are submitted in waves of `--wave` (20 concurrent clients), each wave waited for
before the next, so the queue never holds more than one wave. After every wave it samples:
the gateway's and the worker's RSS (process and children, /proc via psutil) and Redis'
`used_memory`.

Redis per finished job is given two ways: the growth of `used_memory` from the first to the last
wave divided by the jobs in between (everything a job leaves behind: its record, events stream,
RQ job hash, index entries), and `MEMORY USAGE` of each key that carries one finished job's id.

    .venv/bin/python benchmarks/bench_memory.py [--jobs 10000] [--wave 500] [--safety off] [--no-report]

Writes the "memory" section of benchmarks/REPORT.md and benchmarks/figures/memory_growth.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, http_ok, publish, save_figure, stop_processes, wait_until  # noqa: E402

SECTION = "memory"
BODY = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 1}
CLIENTS = 20


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children, MiB."""
    import psutil

    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class Stack:
    """redis-server, gateway and one worker from this tree, as child processes."""

    def __init__(self, workdir: Path, safety: str) -> None:
        self.workdir = workdir
        self.children: dict[str, subprocess.Popen] = {}
        redis_port, port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.url = f"http://127.0.0.1:{port}"
        self._spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(workdir)], os.environ.copy())  # fmt: skip
        env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
        env.update(
            GENSVC_REDIS_URL=self.redis_url, GENSVC_KEY_PREFIX="mem", GENSVC_MODEL="tiny",
            GENSVC_STORAGE_DIR=str(workdir / "images"), GENSVC_LOG_LEVEL="WARNING",
            GENSVC_MAX_BATCH_IMAGES="16", GENSVC_SAFETY_POLICY=safety, GENSVC_MAX_QUEUED="1000000", GENSVC_MAX_QUEUED_PER_KEY="1000000",
            OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
        )  # fmt: skip
        self._spawn("gateway", [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)], env)  # fmt: skip
        self._spawn("worker", [sys.executable, "-m", "workers.gpu_worker"], env)
        wait_until(lambda: http_ok(f"{self.url}/readyz"), 600, "gateway and worker")

    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.children[name] = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self) -> None:
        stop_processes(list(reversed(self.children.values())))


async def wave(url: str, count: int) -> list[str]:
    """Submit `count` jobs from CLIENTS clients, then wait until every one is terminal."""
    ids: list[str] = []
    remaining = count
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                # A kept-alive connection the server has just closed fails the request (ReadError);
                # the Idempotency-Key makes sending it again safe: at most one job either way.
                headers = {"Idempotency-Key": uuid.uuid4().hex}
                for attempt in range(3):
                    try:
                        answer = await http.post("/v1/jobs", json=BODY, headers=headers)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                assert answer.status_code in (200, 202), answer.text[:300]
                ids.append(answer.json()["id"])

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        for job_id in ids:
            while True:
                try:
                    job = (await http.get(f"/v1/jobs/{job_id}")).json()
                except httpx.TransportError:  # as above; a GET is safe to repeat
                    continue
                if job["status"] in ("succeeded", "failed", "canceled"):
                    assert job["status"] == "succeeded", job
                    break
                await asyncio.sleep(0.2)
    return ids


def job_keys_bytes(redis, job_id: str) -> dict[str, int]:
    """MEMORY USAGE of every key whose name carries `job_id`."""
    sizes = {}
    for key in redis.scan_iter(match=f"*{job_id}*", count=10_000):
        name = key.decode()
        sizes[name.replace(job_id, "{id}")] = int(redis.memory_usage(key, samples=0) or 0)
    return sizes


def figure(samples: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [s["jobs"] for s in samples]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(jobs, [s["gateway_mb"] for s in samples], marker="o", label="gateway RSS")
    left.plot(jobs, [s["worker_mb"] for s in samples], marker="o", label="worker RSS")
    left.set(xlabel="jobs finished", ylabel="MiB", title="process memory over jobs")
    left.set_ylim(bottom=0)
    right.plot(jobs, [s["redis_mb"] for s in samples], marker="o", color="C2")
    right.set(xlabel="jobs finished", ylabel="MiB", title="Redis used_memory (jobs retained)")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    left.legend()
    save_figure(fig, "memory_growth.png")


def report(samples: list[dict], keys: dict[str, int], args, seconds: float) -> str:
    first, last = samples[0], samples[-1]
    span = last["jobs"] - first["jobs"]
    per_job = (last["redis_bytes"] - first["redis_bytes"]) / span if span else float("nan")
    load = os.getloadavg()
    lines = [
        "## Memory over many jobs (`benchmarks/bench_memory.py`)",
        "",
        f"{last['jobs']} jobs through one gateway and one worker (tiny model, 64x64, 1 step, GENSVC_SAFETY_POLICY="
        f"{args.safety}, batches of "
        f"up to 16), submitted in waves of {args.wave}; {seconds:.0f} s in all; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on {os.cpu_count()} CPUs. "
        "RSS includes children; the first sample is after the first wave (models loaded, caches warm).",
        "",
        "| jobs finished | gateway RSS MiB | worker RSS MiB | Redis used_memory MiB | Redis keys |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s['jobs']} | {s['gateway_mb']:.0f} | {s['worker_mb']:.0f} | {s['redis_mb']:.1f} | {s['keys']} |"
        )
    growth = {
        name: (last[name] - first[name]) / span * 1000 if span else float("nan")
        for name in ("gateway_mb", "worker_mb")
    }
    lines += [
        "",
        f"Growth from {first['jobs']} to {last['jobs']} jobs: gateway {growth['gateway_mb']:+.2f} MiB per 1000 jobs, "
        f"worker {growth['worker_mb']:+.2f} MiB per 1000 jobs.",
        "",
        f"**Redis per finished job** (retained until GENSVC_RETENTION_S): {per_job:.0f} bytes from the growth of "
        f"`used_memory` over {span} jobs. `MEMORY USAGE` of one finished job's own keys:",
        "",
        "| key | bytes |",
        "|---|---:|",
        *(f"| `{name}` | {size} |" for name, size in sorted(keys.items())),
        f"| total | {sum(keys.values())} |",
        "",
        "`MEMORY USAGE` counts each key's own allocator overhead, so the two agree only roughly;"
        " index entries (the owner index, RQ's finished registry, metrics buckets) are a few dozen"
        " bytes per job.",
        "",
        "![memory growth](figures/memory_growth.png)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--wave", type=int, default=500)
    parser.add_argument(
        "--max-seconds", type=float, default=3600, help="start no new wave after this long"
    )
    parser.add_argument(
        "--safety", default="blur", help="GENSVC_SAFETY_POLICY of the worker (blur, or off: faster)"
    )
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    from redis import Redis

    started = time.monotonic()
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gensvc-memory-") as tmp:
        stack = Stack(Path(tmp), args.safety)
        try:
            redis = Redis.from_url(stack.redis_url)
            done, last_id = 0, ""
            while done < args.jobs and time.monotonic() - started < args.max_seconds:
                ids = asyncio.run(wave(stack.url, min(args.wave, args.jobs - done)))
                done += len(ids)
                last_id = ids[-1]
                sample = {
                    "jobs": done,
                    "gateway_mb": rss_mb(stack.children["gateway"].pid),
                    "worker_mb": rss_mb(stack.children["worker"].pid),
                    "redis_bytes": int(redis.info("memory")["used_memory"]),
                    "keys": int(redis.dbsize()),
                }
                sample["redis_mb"] = sample["redis_bytes"] / 2**20
                samples.append(sample)
                print(
                    f"{done} jobs, {time.monotonic() - started:.0f} s: gateway {sample['gateway_mb']:.0f} MiB, "
                    f"worker {sample['worker_mb']:.0f} MiB, redis {sample['redis_mb']:.1f} MiB",
                    file=sys.stderr,
                )
            keys = job_keys_bytes(redis, last_id)
        finally:
            stack.stop()
    text = report(samples, keys, args, time.monotonic() - started)
    figure(samples)
    publish(SECTION, text, report=not args.no_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
