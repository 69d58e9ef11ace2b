"""Redis Sentinel failover gap (numbers, not a test): how long clients cannot submit when the
Redis master dies, and whether anything accepted is lost.

Starts, on loopback, a Redis master with two replicas and three sentinels
(`down-after-milliseconds 1000`), one gateway and one GPU worker on the tiny model, all through
Sentinel with GENSVC_REDIS_MIN_REPLICAS=1; then, per run, clients submit jobs continuously, one
long job is followed over SSE, and the master is SIGKILLed (tests/ha/failover.py). A fresh set
of servers per run.

    .venv/bin/python benchmarks/bench_failover.py [--runs 2] [--no-report]

Writes the "failover" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    free_port,
    http_ok,
    pct,
    stop_processes,
    wait_until,
    write_section,
)

sys.path.insert(0, str(ROOT / "tests"))
from ha.failover import run_failover  # noqa: E402
from ha.servers import MASTER_NAME, SentinelSet  # noqa: E402

SECTION = "failover"


def one_run(workdir: Path, cache_dir: str) -> dict:
    servers = SentinelSet(workdir / "redis").start()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
    env.update(
        GENSVC_REDIS_URL="redis://unused:1/0", GENSVC_REDIS_SENTINELS=",".join(servers.addresses),
        GENSVC_REDIS_SENTINEL_MASTER=MASTER_NAME, GENSVC_REDIS_MIN_REPLICAS="1", GENSVC_MODEL="tiny",
        GENSVC_KEY_PREFIX=f"fo_{secrets.token_hex(3)}", GENSVC_CACHE_DIR=cache_dir,
        GENSVC_STORAGE_DIR=str(workdir / "images"), GENSVC_LOG_LEVEL="WARNING", GENSVC_JOB_TIMEOUT_S="600",
        GENSVC_WORKER_HEARTBEAT_S="1", GENSVC_WORKER_DEAD_AFTER_S="5", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
    )  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = []
    try:
        for name, argv in (
            (
                "gateway",
                [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)],
            ),
            ("worker", [sys.executable, "-m", "workers.gpu_worker"]),
        ):
            log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            processes.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=log))
            log.close()
        wait_until(lambda: http_ok(f"{url}/readyz"), 900, "gateway and worker")
        run = run_failover(url, servers, settle_s=300)
        return {
            "gap_s": run.gap_s, "promotion_s": run.promotion_s, "unavailable": run.unavailable,
            "retry_after": sorted(run.retry_after - {""}), "accepted": len(run.accepted),
            "lost": len(run.lost), "other_errors": len(run.other_errors),
            "sse": run.followed_status, "worker_alive": processes[1].poll() is None,
        }  # fmt: skip
    finally:
        stop_processes(processes)
        servers.stop()


def render(runs: list[dict]) -> str:
    gaps = [run["gap_s"] for run in runs]
    rows = "\n".join(
        f"| {i + 1} | {r['gap_s']:.2f} | {r['promotion_s']:.2f} | {r['unavailable']} "
        f"| {', '.join(r['retry_after']) or '-'} | {r['accepted']} | {r['lost']} | {r['other_errors']} "
        f"| {r['sse']} | {'yes' if r['worker_alive'] else 'NO'} |"
        for i, r in enumerate(runs)
    )
    return f"""## Redis Sentinel failover (`benchmarks/bench_failover.py`)

{platform.machine()}, {os.cpu_count()} CPUs (shared, loaded); master + 2 replicas + 3 sentinels
(`down-after-milliseconds 1000`), 1 gateway, 1 worker (tiny model), `GENSVC_REDIS_MIN_REPLICAS=1`.
Clients submit continuously (2-step jobs, 0.5 s apart, each submit retried with its
Idempotency-Key every 0.1 s while it gets 503); the master is SIGKILLed.

| run | gap: kill -> next 202 (s) | sentinels promote (s) | 503s | Retry-After | accepted | lost | other errors | SSE follower | worker survived |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Failover gap: median {pct(gaps, 0.5):.2f} s, worst {max(gaps):.2f} s. Most requests during the gap
are not refused but wait inside redis-py's retry with backoff, so clients see few 503s; every
accepted job finished (WAIT-confirmed on a replica before the 202).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    cache_dir = os.environ.get("GENSVC_CACHE_DIR") or str(Path.home() / ".cache" / "gensvc")
    runs = []
    with tempfile.TemporaryDirectory(prefix="gensvc-failover-") as tmp:
        for index in range(args.runs):
            workdir = Path(tmp) / f"run{index}"
            workdir.mkdir()
            runs.append(one_run(workdir, cache_dir))
            print(runs[-1], flush=True)
    text = render(runs)
    print(text)
    if not args.no_report:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
