"""Fair share benchmark (numbers, not a test): how long key B's job waits behind key A's flood.

For each source tree given (the old commit and this one, side by side in one run) it starts a
private redis-server, a gateway and one GPU worker (tiny model, CPU is fine) from that tree with
two API keys, lets A submit FLOOD jobs, then B submits one, and measures B's time in the queue
(its `timings.queued_ms`), how many of A's jobs and batches started before it, and whether B's
job shared its batch with A's.

    .venv/bin/python benchmarks/bench_fairness.py --tree before=/tmp/perf-base --tree after=. \
        [--flood 500] [--no-report]

Writes the "fairness" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, http_ok, poll, publish, stop_processes, wait_until  # noqa: E402

SECTION = "fairness"
BODY = {"prompt": "a blue square on the left", "width": 64, "height": 64, "steps": 2, "seed": 7}
KEY_A, KEY_B = "bench-key-a", "bench-key-b"


def run_tree(tree: Path, flood: int, max_wait_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gensvc-fair-") as tmp:
        workdir = Path(tmp)
        processes: list[subprocess.Popen] = []

        def spawn(name: str, argv: list[str], env: dict | None) -> None:
            log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            processes.append(
                subprocess.Popen(argv, env=env, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
            )
            log.close()

        redis_port, port = free_port(), free_port()
        spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(workdir)], None)  # fmt: skip
        env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
        env.update(
            GENSVC_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", GENSVC_KEY_PREFIX="fair", GENSVC_MODEL="tiny",
            GENSVC_STORAGE_DIR=str(workdir / "images"), GENSVC_LOG_LEVEL="WARNING", GENSVC_API_KEYS=f"{KEY_A},{KEY_B}",
            GENSVC_MAX_QUEUED="5000", GENSVC_MAX_QUEUED_PER_KEY="5000", GENSVC_MAX_BATCH_IMAGES="4",
            HF_HUB_OFFLINE="1", PYTHONPATH=str(tree),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            spawn(
                "gateway",
                [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)],
                env,
            )
            wait_until(lambda: http_ok(f"{url}/healthz"), 60, "gateway")
            a_ids = asyncio.run(_flood(url, flood))
            spawn("worker", [sys.executable, "-m", "workers.gpu_worker"], env)
            wait_until(lambda: http_ok(f"{url}/readyz"), 900, "worker")
            headers_b = {"Authorization": f"Bearer {KEY_B}"}
            with httpx.Client(timeout=30) as http:
                poll(lambda: _get(http, url, a_ids[0], KEY_A)["status"] != "queued", 300)
                submitted = time.monotonic()
                b_id = http.post(f"{url}/v1/jobs", json=BODY, headers=headers_b).json()["id"]
                b_job = poll(
                    lambda: (j := _get(http, url, b_id, KEY_B))["status"] == "succeeded" and j,
                    max_wait_s,
                )
                b_wait_s = time.monotonic() - submitted
                a_jobs = [_get(http, url, job_id, KEY_A) for job_id in a_ids]
                if b_job is None:  # still waiting: report what ran in front of it so far
                    b_job = _get(http, url, b_id, KEY_B)
        finally:
            stop_processes(list(reversed(processes)))
    b_started = b_job["started_at"] or "9999"  # not started: everything that ran was ahead
    ahead = [job for job in a_jobs if job["started_at"] and job["started_at"] < b_started]
    return {
        "b_done": b_job["status"] == "succeeded",
        "b_wait_s": b_wait_s,
        "b_queued_ms": b_job["timings"].get("queued_ms"),
        "a_jobs_ahead": len(ahead),
        "a_batches_ahead": len({job["batch"]["id"] for job in ahead if job.get("batch")}),
        "b_batch_jobs": (b_job.get("batch") or {}).get("jobs"),
        "shared_with_a": bool(b_job.get("batch"))
        and any((job.get("batch") or {}).get("id") == b_job["batch"]["id"] for job in a_jobs),
    }


async def _flood(url: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    ids: list[str] = []

    async def one(http: httpx.AsyncClient) -> str | None:
        for _ in range(5):  # a loaded machine may drop a connection: the submit is retried
            try:
                answer = await http.post(f"{url}/v1/jobs", json=BODY)
            except httpx.TransportError:
                await asyncio.sleep(0.5)
                continue
            return answer.json()["id"] if answer.status_code == 202 else None
        return None

    async with httpx.AsyncClient(timeout=120, headers=headers) as http:
        for start in range(0, count, 10):
            answers = await asyncio.gather(*(one(http) for _ in range(min(10, count - start))))
            ids += [job_id for job_id in answers if job_id]
    return ids


def _get(http: httpx.Client, url: str, job_id: str, key: str) -> dict:
    return http.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="LABEL=PATH (repeatable)")
    parser.add_argument("--flood", type=int, default=500)
    parser.add_argument("--max-wait", type=float, default=600, help="stop waiting for B after this")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    trees = [item.split("=", 1) for item in args.tree] or [
        ["this", str(Path(__file__).resolve().parent.parent)]
    ]
    rows = []
    for label, path in trees:
        result = run_tree(Path(path).resolve(), args.flood, args.max_wait)
        print(label, result, file=sys.stderr)
        done = result["b_done"]
        wait = f"{result['b_wait_s']:.1f}" if done else f"> {result['b_wait_s']:.0f} (still queued)"
        rows.append(
            f"| {label} | {wait} | {result['a_jobs_ahead']} | {result['a_batches_ahead']} | "
            f"{result['b_batch_jobs']} | {'yes' if result['shared_with_a'] else 'no'} |"
        )
    text = "\n".join([
        "## Fair share: key B behind key A's flood (`benchmarks/bench_fairness.py`)",
        "",
        f"Key A submits {args.flood} jobs (64 px, 2 steps, tiny model, one worker, batches of up to 4 "
        "images), then key B submits one; every tree in the same run. A wait marked \"still queued\" "
        "hit `--max-wait` and is a lower bound.",
        "",
        "| tree | B's wait (s) | A's jobs started before B | A's batches before B | jobs in B's batch | B shared a batch with A |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
    ])  # fmt: skip
    publish(SECTION, text, report=not args.no_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
