"""Gateway CPU per request (numbers, not a test): what a submit and a read cost the gateway process.

On a shared, overloaded machine requests/s mostly measures how much CPU the gateway was given;
CPU time per request does not, so it compares trees fairly. For each tree (in turn, `--rounds`
times) a child process from that tree builds the app (`create_app`), runs its lifespan and sends
`--requests` concurrent POST /v1/jobs, then as many GET /v1/jobs/{id}, through httpx's in-process
ASGI transport against the real Redis (its own key prefix, removed after). Reported: CPU ms per
request of that process (all threads; the in-process client's share included, the same for every
tree), median over rounds. uvicorn's HTTP parsing is not included.

    .venv/bin/python benchmarks/bench_gateway_cpu.py --tree before=OLD --tree after=. [--rounds 3]

Writes the "gateway-cpu" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish  # noqa: E402

SECTION = "gateway-cpu"
CHILD = r"""
import asyncio, json, os, secrets, sys, time
import httpx
from redis import Redis
from generative_service.api.app import create_app
from generative_service.settings import Settings

BODY = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 4}
N = int(sys.argv[1])

async def main():
    settings = Settings(model="tiny", key_prefix=f"cpubench_{secrets.token_hex(4)}", max_queued=10**7,
                        max_queued_per_key=10**7, log_level="WARNING")
    app = create_app(settings)
    out = {}
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                for _ in range(50):  # warm up
                    answer = await http.post("/v1/jobs", json=BODY)
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["id"]
                for name, call in (("post", lambda: http.post("/v1/jobs", json=BODY)),
                                   ("get", lambda: http.get(f"/v1/jobs/{job_id}"))):
                    cpu = time.process_time()
                    answers = await asyncio.gather(*(call() for _ in range(N)))
                    out[name] = (time.process_time() - cpu) / N * 1000
                    out[name + "_errors"] = sum(a.status_code >= 300 for a in answers)
    finally:
        redis = Redis.from_url(settings.redis_url)
        for key in redis.scan_iter(match=f"{settings.key_prefix}*", count=10000):
            redis.delete(key)
        for key in redis.scan_iter(match=f"rq:*{settings.key_prefix}*", count=10000):
            redis.delete(key)
    print(json.dumps(out))

asyncio.run(main())
"""


def one_run(tree: Path, requests: int) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
    env.update(PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    answer = subprocess.run(
        [sys.executable, "-c", CHILD, str(requests)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(answer.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="LABEL=PATH (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    trees = [item.split("=", 1) for item in args.tree] or [["this", str(Path.cwd())]]
    runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for label, path in trees:
            runs[label].append(one_run(Path(path).resolve(), args.requests))
            print(f"{label}: {runs[label][-1]}", file=sys.stderr)
    load.append(os.getloadavg()[0])
    first = trees[0][0]
    med = {
        label: {k: statistics.median(r[k] for r in rs) for k in ("post", "get")}
        for label, rs in runs.items()
    }
    lines = [
        "## Gateway CPU per request (`benchmarks/bench_gateway_cpu.py`)",
        "",
        f"CPU time of the gateway process per request (app + in-process client, no uvicorn), {args.requests} "
        f"concurrent requests, median of {args.rounds} rounds, trees in turn; load average {load[0]:.1f} at the start "
        f"and {load[-1]:.1f} at the end on {os.cpu_count()} CPUs (CPU time is far less sensitive to it than requests/s).",
        "",
        f"| tree | POST /v1/jobs, CPU ms | GET /v1/jobs/{{id}}, CPU ms | POST: {first}'s CPU / this | GET: {first}'s CPU / this | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, m in med.items():
        errors = sum(r["post_errors"] + r["get_errors"] for r in runs[label])
        lines.append(
            f"| {label} | {m['post']:.2f} | {m['get']:.2f} | {med[first]['post'] / m['post']:.2f}x "
            f"| {med[first]['get'] / m['get']:.2f}x | {errors} |"
        )
    publish(SECTION, "\n".join(lines), report=not args.no_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
