"""The service against a plain diffusers + FastAPI server (numbers, not a test).

Same model (this tree's bundled demo pipeline, given to every server as a path), 64x64, 20 steps,
DPM++ 2M Karras, OMP_NUM_THREADS=1 for all. 1, 4 and 10 concurrent users each loop for
`--seconds`: the baseline user POSTs /generate and gets the PNG; the service user POSTs /v1/jobs
with `Prefer: wait=120` (answered when the job ended) and downloads the image. Reported: images/s
and p50/p90 per-image latency.

    .venv/bin/python benchmarks/bench_baseline.py [--tree before=OLD --tree after=.] \
        [--seconds 20] [--rounds 2] [--users 1,4,10]

Every server is up at once (the baseline, and a gateway + one GPU worker per tree given, each on
its own redis-server; GENSVC_MAX_BATCH_IMAGES=10, so up to ten users' jobs share a pipeline
call) and they are measured in turn, `--rounds` times over, so the load of a shared machine
falls on all of them alike. Writes the "baseline" section of REPORT.md and
benchmarks/figures/service_vs_baseline.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, http_ok, pct, save_figure, wait_until, write_section  # noqa: E402

SECTION = "baseline"
MODEL = ROOT / "generative_service" / "models" / "demo" / "pipeline"
BASELINE = "plain diffusers + FastAPI"
PROMPTS = [
    "a red circle above a blue square",
    "two green triangles",
    "a blue square on the left",
    "a yellow circle",
]


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen] = []

    def spawn(self, name: str, argv: list[str], env: dict, cwd: Path) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.children.append(
            subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        self.children = []


def _env(tree: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(tree))
    return env


async def _users(count: int, seconds: float, one) -> tuple[list[float], float]:
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + seconds

    async def user(index: int) -> None:
        async with httpx.AsyncClient(timeout=180) as http:
            n = 0
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                await one(http, PROMPTS[(index + n) % len(PROMPTS)], index * 1000 + n)
                latencies.append(time.perf_counter() - t0)
                n += 1

    await asyncio.gather(*(user(i) for i in range(count)))
    return latencies, time.monotonic() - started


def start_baseline(procs: Processes):
    """Start the plain server; returns one user request (POST /generate, check the PNG)."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "benchmarks" / "baseline_server.py"), "--model", str(MODEL),
            "--port", str(port)]  # fmt: skip
    procs.spawn("baseline", argv, _env(ROOT), ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/healthz"), 300, "baseline server")

    async def one(http: httpx.AsyncClient, prompt: str, seed: int) -> None:
        answer = await http.post(
            f"{url}/generate",
            json={"prompt": prompt, "width": 64, "height": 64, "steps": 20, "seed": seed},
        )
        assert answer.status_code == 200 and answer.content[:4] == b"\x89PNG", answer.text[:200]

    return one


def start_service(label: str, tree: Path, procs: Processes, extra_env: dict[str, str]):
    """Start redis, a gateway and one worker from `tree` (with `extra_env` set, e.g. an engine
    backend); returns one user request (submit with `Prefer: wait`, then download the image) and
    a wait for the service to be ready."""
    redis_port, port = free_port(), free_port()
    workdir = procs.workdir / label
    workdir.mkdir()
    procs.spawn(f"{label}-redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(workdir)], os.environ.copy(), tree)  # fmt: skip
    env = _env(tree) | {
        "GENSVC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "GENSVC_KEY_PREFIX": "baseline",
        "GENSVC_STORAGE_DIR": str(workdir / "images"), "GENSVC_LOG_LEVEL": "WARNING",
        "GENSVC_MAX_BATCH_IMAGES": "10", "GENSVC_WAIT_MAX_S": "120", "GENSVC_MODEL": str(MODEL),
        "GENSVC_CACHE_DIR": str(workdir / "cache"),
    } | extra_env  # fmt: skip
    argv = [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)]
    procs.spawn(f"{label}-gateway", argv, env, tree)
    procs.spawn(f"{label}-worker", [sys.executable, "-m", "workers.gpu_worker"], env, tree)
    url = f"http://127.0.0.1:{port}"

    async def one(http: httpx.AsyncClient, prompt: str, seed: int) -> None:
        body = {"prompt": prompt, "width": 64, "height": 64, "steps": 20, "seed": seed}
        answer = await http.post(f"{url}/v1/jobs", json=body, headers={"Prefer": "wait=120"})
        job = answer.json()
        assert answer.status_code == 200 and job["status"] == "succeeded", answer.text[:300]
        image = await http.get(f"{url}/v1/jobs/{job['id']}/images/0")
        assert image.status_code == 200, image.text[:200]

    def ready() -> None:
        wait_until(lambda: http_ok(f"{url}/readyz"), 900, f"service of {label}")

    return one, ready


def _tree(spec: str) -> tuple[str, Path, dict[str, str]]:
    """`LABEL=PATH[:KEY=VALUE,...]` -> (label, path, environment)."""
    label, rest = spec.split("=", 1)
    path, _, assignments = rest.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return label, Path(path).resolve(), env


def interleaved(servers: dict, users: list[int], seconds: float, rounds: int) -> dict:
    """Each server measured at each user count in turn, `rounds` times (the order of the servers
    reversed every other round); latencies and wall time summed per server and user count."""
    out: dict[str, dict[int, tuple]] = {label: {} for label in servers}
    for one in servers.values():
        asyncio.run(_users(1, 3, one))  # warm up
    for round_ in range(rounds):
        order = list(servers.items())
        for n in users:
            for label, one in order if round_ % 2 == 0 else reversed(order):
                latencies, wall = asyncio.run(_users(n, seconds, one))
                before = out[label].get(n, ([], 0.0))
                out[label][n] = (before[0] + latencies, before[1] + wall)
                print(f"round {round_ + 1}, {n} users, {label}: {len(latencies) / wall:.2f} images/s",
                      file=sys.stderr)  # fmt: skip
    return out


def figure(results: dict[str, dict[int, tuple]], users: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in results.items():
        left.plot(users, [len(rows[n][0]) / rows[n][1] for n in users], marker="o", label=label)
        right.plot(users, [pct(rows[n][0], 0.5) * 1000 for n in users], marker="o", label=label)
    left.set(
        xlabel="concurrent users",
        ylabel="images / s",
        title="throughput (demo model, 64 px, 20 steps)",
    )
    right.set(xlabel="concurrent users", ylabel="p50 latency per image (ms)", title="latency")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend()
    save_figure(fig, "service_vs_baseline.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="LABEL=PATH[:KEY=VALUE,...]: a service from that source tree, with those environment "
        "variables (e.g. now-ort=.:GENSVC_ENGINE_BACKEND=onnxruntime); repeatable",
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", default="1,4,10")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    users = [int(n) for n in args.users.split(",")]
    trees = [_tree(item) for item in args.tree] or [("service", ROOT, {})]
    loads = []
    with tempfile.TemporaryDirectory(prefix="gensvc-baseline-") as tmp:
        procs = Processes(Path(tmp))
        try:
            servers = {BASELINE: start_baseline(procs)}
            starting = {  # all start at once; each loads its models
                label: start_service(label, path, procs, env) for label, path, env in trees
            }
            for label, (one, ready) in starting.items():
                ready()
                servers[label] = one
            loads.append(os.getloadavg()[0])
            results = interleaved(servers, users, args.seconds, args.rounds)
            loads.append(os.getloadavg()[0])
        finally:
            procs.stop()
    base = results[BASELINE]
    lines = [
        "## Service vs a plain diffusers + FastAPI server (`benchmarks/bench_baseline.py`)",
        "",
        f"Demo model, 64x64, 20 steps, OMP_NUM_THREADS=1 in both; each user loops for {args.seconds:g} s "
        "(service: submit with `Prefer: wait`, then download; GENSVC_MAX_BATCH_IMAGES=10, NSFW filter on). "
        f"All servers up at once, measured in turn ({args.rounds} rounds, latencies pooled); load average "
        f"{loads[0]:.1f} at the start and {loads[-1]:.1f} at the end on {os.cpu_count()} CPUs.",
        "",
        "| server | users | images | images / s | vs baseline | p50 ms | p90 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows in results.items():
        for n in users:
            latencies, wall = rows[n]
            rate = len(latencies) / wall
            base_rate = len(base[n][0]) / base[n][1]
            lines.append(f"| {label} | {n} | {len(latencies)} | {rate:.2f} | {rate / base_rate:.2f}x | "
                         f"{pct(latencies, 0.5) * 1000:.0f} | {pct(latencies, 0.9) * 1000:.0f} |")  # fmt: skip
    lines += ["", "![service vs baseline](figures/service_vs_baseline.png)"]
    text = "\n".join(lines)
    print(text)
    figure(results, users)
    if not args.no_report:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
