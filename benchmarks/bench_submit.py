"""Submit and read benchmark of the gateway (numbers, not a test), with `hey` as the load generator.

Jobs only queue (no GPU worker runs). For each source tree given (e.g. the old commit and this
one, side by side in one run, so the ratio means something on a noisy machine) it starts a private
redis-server and `gensvc api --workers N` from that tree, then measures:

1. POST /v1/jobs at 10 and 100 concurrent clients: submits/s, p50, p99, non-202 answers;
2. GET /v1/jobs/{id} at 50 clients: reads/s, p50, p99;
3. queue depth: submit and GET latency with 100 and with 100 000 jobs queued ahead;

and for each, the gateway's CPU milliseconds per request (user + system time of its process and
its uvicorn workers, from /proc): on a shared machine requests/s mostly says how much CPU the
gateway was given, CPU per request says what a request costs.

    .venv/bin/python benchmarks/bench_submit.py --tree before=/tmp/perf-base --tree after=. \
        [--api-workers 1,2] [--seconds 8] [--deep 100000] [--no-report]
    .venv/bin/python benchmarks/bench_submit.py --tree before=OLD --tree after=. \
        --tree "after, 2 proc=.@2" --interleave 3 --depth-only

With `--interleave ROUNDS` every tree's gateway is up at once and they are measured in
alternating slices (the fair comparison on a shared machine); `PATH@N` runs that tree's gateway
as `gensvc api --workers N`. `--depth-only` then runs only the queue-depth part per tree.
`--plain LABEL` hides uvloop, httptools and hiredis from that tree's gateway (a tree from before
they were dependencies would otherwise pick them up from the shared venv: uvicorn and redis-py use
them whenever installed). `--log-level INFO` measures with the service's default logging (one
JSON line per request and per submit) instead of WARNING.

    .venv/bin/python benchmarks/bench_submit.py --tree before=OLD --tree "main=MAIN" \
        --tree after=. --plain before --plain main --interleave 3 --interleave-only --seconds 4

`--offered` adds open-loop slices to `--interleave`: 100 clients at 10 submits/s each (1000/s
offered) and at 20 reads/s each (2000/s), the achieved rate, p50/p99 and CPU beside the closed
loop's (`--offered-only`: those slices alone):

    .venv/bin/python benchmarks/bench_submit.py --tree after=. --interleave 3 --interleave-only \
        --offered-only --seconds 4 --no-report

`--poisson` adds two open-loop slices with Poisson arrivals (700 and 1000 submits/s over 100
connections, benchmarks/open_loop.mjs, needs `node`), latency counted from when each request was
due: what independent users see, where `hey -q`'s clients fire in lock-step and slow down with
the gateway.

`hey` is the Debian package `hey` (`apt-get install hey`). Writes the "submit" section of
benchmarks/REPORT.md and benchmarks/figures/submit_latency.png.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    free_port,
    http_ok,
    pct,
    plain_pythonpath,
    tree_cpu_s,
    wait_until,
    write_section,
)

SECTION = "submit"
FIGURES = ROOT / "benchmarks" / "figures"
BODY = {"prompt": "a red circle above a blue square", "width": 64, "height": 64, "steps": 4}


@dataclass
class Load:
    """What one `hey` run saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU the gateway process(es) used meanwhile (0: not measured)

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def p(self, q: float) -> float:
        return pct(self.latencies_ms, q)

    @property
    def cpu_ms(self) -> float:
        """Gateway CPU milliseconds per request."""
        return self.cpu_s * 1000 / len(self.latencies_ms) if self.latencies_ms else float("nan")

    def add(self, other: Load) -> None:
        self.latencies_ms += other.latencies_ms
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count

    def row(self) -> str:
        other = {k: v for k, v in self.statuses.items() if k not in (200, 202)}
        return (
            f"{self.rate:.0f} | {self.p(0.5):.1f} | {self.p(0.99):.1f} | {self.cpu_ms:.2f} "
            f"| {other or 0}"
        )


def hey(
    url: str,
    *,
    clients: int,
    seconds: float = 0,
    requests: int = 0,
    post: bool,
    gateway_pid: int | None = None,
    qps: int = 0,
) -> Load:
    """`qps` > 0: each client sends at most `qps` requests per second (hey -q), an offered load
    of clients x qps per second; 0: each sends its next request as soon as the last is answered."""
    argv = ["hey", "-c", str(clients), "-o", "csv", "-t", "30"]
    argv += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
    argv += ["-q", str(qps)] if qps else []
    if post:
        argv += ["-m", "POST", "-T", "application/json", "-d", json.dumps(BODY)]
    cpu_before = tree_cpu_s(gateway_pid) if gateway_pid else 0.0
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    load = Load(cpu_s=tree_cpu_s(gateway_pid) - cpu_before if gateway_pid else 0.0)
    starts, ends = [], []
    for row in csv.DictReader(io.StringIO(out)):
        seconds_taken, offset = float(row["response-time"]), float(row["offset"])
        load.latencies_ms.append(seconds_taken * 1000)
        status = int(row["status-code"])
        load.statuses[status] = load.statuses.get(status, 0) + 1
        starts.append(offset)
        ends.append(offset + seconds_taken)
    load.wall_s = (max(ends) - min(starts)) if starts else 0.0
    return load


def poisson(url: str, *, clients: int, seconds: float, post: bool, gateway_pid: int | None = None,
            qps: int) -> Load:  # fmt: skip
    """Open loop with Poisson arrivals: `qps` requests/s in all over at most `clients` keep-alive
    connections, each latency counted from when its request was due (benchmarks/open_loop.mjs,
    Node's own http). Unlike `hey -q`, which sends its clients' requests in lock-step bursts and
    sends less when answers are late, this keeps offering the rate whatever the answers take."""
    argv = [
        "node",
        str(ROOT / "benchmarks" / "open_loop.mjs"),
        url,
        str(qps),
        str(seconds),
        str(clients),
    ]
    argv += [json.dumps(BODY)] if post else []
    cpu_before = tree_cpu_s(gateway_pid) if gateway_pid else 0.0
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    load = Load(cpu_s=tree_cpu_s(gateway_pid) - cpu_before if gateway_pid else 0.0)
    load.latencies_ms = out["latencies_ms"]
    load.statuses = {int(code) if code.isdigit() else 0: n for code, n in out["statuses"].items()}
    load.wall_s = out["wall_s"]
    return load


class Service:
    """A private redis-server and one gateway started from `tree`."""

    def __init__(
        self,
        tree: Path,
        workdir: Path,
        api_workers: int,
        *,
        plain: bool = False,
        log_level: str = "WARNING",
    ) -> None:
        self.tree = tree
        self.processes: list[subprocess.Popen] = []
        self.redis_port = free_port()
        self._spawn(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)], workdir / "redis.log", None,
        )  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        wait_until(self._redis_up, 20, "redis")
        self.prefix = "bench"
        env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
        env.update(
            GENSVC_REDIS_URL=self.redis_url, GENSVC_KEY_PREFIX=self.prefix, GENSVC_MODEL="tiny",
            GENSVC_STORAGE_DIR=str(workdir / "images"), GENSVC_LOG_LEVEL=log_level, GENSVC_MAX_QUEUED="1000000",
            GENSVC_MAX_QUEUED_PER_KEY="1000000", HF_HUB_OFFLINE="1",
            PYTHONPATH=f"{plain_pythonpath(workdir)}:{tree}" if plain else str(tree),
        )  # fmt: skip
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)]
        self._spawn([*argv, "--workers", str(api_workers)], workdir / "gateway.log", env)
        self.pid = self.processes[-1].pid
        wait_until(lambda: http_ok(f"{self.url}/healthz"), 300, f"gateway of {tree}")

    def _redis_up(self) -> bool:
        from redis import Redis

        try:
            return bool(Redis.from_url(self.redis_url, socket_connect_timeout=1).ping())
        except Exception:  # noqa: BLE001
            return False

    def _spawn(self, argv: list[str], log_path: Path, env: dict | None) -> None:
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        self.processes.append(
            subprocess.Popen(argv, env=env, cwd=self.tree, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()

    def fill(self, count: int) -> None:
        """Put `count` waiting job ids where the tree's submit and GET look: RQ's queue list (the
        old code's LLEN and LPOS read it) and the queue-order sorted set with its counters (this
        code's ZRANK and bounds read those). Ids only, no records: what each submit and GET pays
        for with that many jobs ahead is the same, and 100 000 real submits would take minutes."""
        from redis import Redis

        from generative_service.keys import Keys

        keys = Keys(self.prefix)
        redis = Redis.from_url(self.redis_url)
        for start in range(0, count, 10_000):
            ids = [f"job_filler{i:010d}" for i in range(start, min(count, start + 10_000))]
            pipe = redis.pipeline(transaction=False)
            pipe.rpush(f"rq:queue:{self.prefix}:default", *ids)
            pipe.zadd(keys.order("default"), {job_id: start + n for n, job_id in enumerate(ids)})
            pipe.execute()
        redis.set(keys.sequence("default"), count)
        redis.hincrby(keys.counts, "queued", count)
        redis.hincrby(keys.counts, "queued:anonymous", count)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass(frozen=True)
class Spec:
    """One gateway to measure: a source tree, its process count, and whether the C speedups
    (uvloop, httptools, hiredis) are hidden from it."""

    label: str
    tree: Path
    workers: int = 1
    plain: bool = False

    def start(self, workdir: Path, log_level: str) -> Service:
        return Service(self.tree, workdir, self.workers, plain=self.plain, log_level=log_level)


def parse_tree(item: str, plain: set[str]) -> Spec:
    """`LABEL=PATH` or `LABEL=PATH@N` (N gateway processes)."""
    label, _, path = item.partition("=")
    where, _, workers = path.partition("@")
    return Spec(label, Path(where).resolve(), int(workers or 1), label in plain)


def measure(spec: Spec, seconds: float, deep: int, log_level: str) -> dict[str, Load]:
    with tempfile.TemporaryDirectory(prefix="gensvc-submit-") as tmp:
        service = spec.start(Path(tmp), log_level)
        try:
            jobs, pid = f"{service.url}/v1/jobs", service.pid
            hey(jobs, clients=10, requests=200, post=True)  # warm up
            out = {
                "post10": hey(jobs, clients=10, seconds=seconds, post=True, gateway_pid=pid),
                "post100": hey(jobs, clients=100, seconds=seconds, post=True, gateway_pid=pid),
            }
            import httpx

            job_id = httpx.post(jobs, json=BODY, timeout=30).json()["id"]
            out["get50"] = hey(
                f"{jobs}/{job_id}", clients=50, seconds=seconds, post=False, gateway_pid=pid
            )
            if deep:
                service.stop()
                return out | depth(spec, deep, seconds, log_level)
            return out
        finally:
            service.stop()


def depth(spec: Spec, deep: int, seconds: float, log_level: str) -> dict[str, Load]:
    """Submit and GET latency behind 100 and behind `deep` queued jobs (fresh Redis for each)."""
    import httpx

    out: dict[str, Load] = {}
    for ahead in (100, deep):
        with tempfile.TemporaryDirectory(prefix="gensvc-depth-") as tmp:
            service = spec.start(Path(tmp), log_level)
            try:
                service.fill(ahead)
                jobs = f"{service.url}/v1/jobs"
                job_id = httpx.post(jobs, json=BODY, timeout=30).json()["id"]
                out[f"post_q{ahead}"] = hey(
                    jobs, clients=10, seconds=seconds / 2, post=True, gateway_pid=service.pid
                )
                out[f"get_q{ahead}"] = hey(
                    f"{jobs}/{job_id}",
                    clients=10,
                    seconds=seconds / 2,
                    post=False,
                    gateway_pid=service.pid,
                )
            finally:
                service.stop()
    return out


class Slice(NamedTuple):
    """One load of an interleaved slice."""

    key: str
    clients: int  # hey's clients, or the Poisson generator's connections
    qps: int  # hey: requests/s per client (0: closed loop); Poisson: requests/s in all
    post: bool
    poisson: bool = False


CLOSED = (
    Slice("post10", 10, 0, True),
    Slice("post100", 100, 0, True),
    Slice("get50", 50, 0, False),
)
# Open loop: 100 clients offering 1000 submits/s and 2000 reads/s in all, whatever the answers take.
OFFERED = (Slice("post_offered1000", 100, 10, True), Slice("get_offered2000", 100, 20, False))
# Open loop with Poisson arrivals over 100 connections (open_loop.mjs): independent users.
POISSON = (
    Slice("post_poisson700", 100, 700, True, True),
    Slice("post_poisson1000", 100, 1000, True, True),
)


def interleaved(
    specs: list[Spec],
    rounds: int,
    seconds: float,
    log_level: str,
    plan: tuple[Slice, ...] = CLOSED,
) -> dict[str, dict[str, Load]]:
    """Every tree's gateway up at once and measured in alternating short slices, so the load of a
    shared machine falls on all trees alike (sequential runs minutes apart see different loads).
    `plan`: the loads of each slice (CLOSED, OFFERED)."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="gensvc-submit-") as tmp:
        services: dict[str, Service] = {}
        try:
            for number, spec in enumerate(specs):
                (Path(tmp) / str(number)).mkdir()
                services[spec.label] = spec.start(Path(tmp) / str(number), log_level)
            out: dict[str, dict[str, Load]] = {label: {} for label in services}
            ids = {}
            for label, service in services.items():
                hey(f"{service.url}/v1/jobs", clients=10, requests=100, post=True)  # warm up
                ids[label] = httpx.post(f"{service.url}/v1/jobs", json=BODY, timeout=60).json()[
                    "id"
                ]
            for _ in range(rounds):
                for label, service in services.items():
                    jobs, pid = f"{service.url}/v1/jobs", service.pid
                    for load_slice in plan:
                        key, clients, qps, post, arrivals = load_slice
                        url = jobs if post else f"{jobs}/{ids[label]}"
                        generate = poisson if arrivals else hey
                        load = generate(url, clients=clients, seconds=seconds, post=post,
                                        gateway_pid=pid, qps=qps)  # fmt: skip
                        out[label].setdefault(key, Load()).add(load)
            return out
        finally:
            for service in services.values():
                service.stop()


def figure(results: dict[str, dict[str, Load]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return None
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "post10", "10 clients"), (axes[1], "post100", "100 clients")):
        for label, loads in results.items():
            values = sorted(loads[key].latencies_ms)
            if values:
                ax.plot(values, [i / len(values) for i in range(len(values))], label=label)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        ax.set_xlabel("POST /v1/jobs latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"submit latency CDF, {title}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = FIGURES / "submit_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cpu_figure(cpu_ms: dict[str, dict[str, float]]) -> Path | None:
    """Bars of the gateway's CPU ms per request, per tree and load (benchmarks/figures/submit_cpu.png)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from _common import save_figure

    loads = [
        ("post10", "POST, 10 clients"),
        ("post100", "POST, 100 clients"),
        ("get50", "GET, 50 clients"),
    ]
    labels = list(cpu_ms)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(labels))
    for number, label in enumerate(labels):
        xs = [i + (number - (len(labels) - 1) / 2) * width for i in range(len(loads))]
        values = [cpu_ms[label].get(key, float("nan")) for key, _ in loads]
        bars = ax.bar(xs, values, width, label=label.removesuffix(", interleaved"))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(loads)), [name for _, name in loads])
    ax.set_ylabel("gateway CPU ms per request")
    ax.set_title("what one request costs the gateway (user + system CPU, lower is better)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, "submit_cpu.png")


def report(
    results: dict[str, dict[str, Load]], deep: int, seconds: float, log_level: str = "WARNING"
) -> str:
    lines = [
        "## Submit and read path (`benchmarks/bench_submit.py`)",
        "",
        f"`hey` against one gateway, jobs only queue (no worker), {seconds:g} s per load, a private "
        "redis-server per tree; every tree measured in the same run, one after the other; "
        f"GENSVC_LOG_LEVEL={log_level}.",
        "",
        "| tree | load | requests/s | p50 ms | p99 ms | gateway CPU ms/request | non-2xx |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    names = {"post10": "POST, 10 clients", "post100": "POST, 100 clients", "get50": "GET job, 50 clients",
             "post_q100": "POST, 100 queued", f"post_q{deep}": f"POST, {deep} queued",
             "get_q100": "GET, 100 queued", f"get_q{deep}": f"GET, {deep} queued",
             "post_offered1000": "POST, 1000/s offered (100 clients x 10/s)",
             "get_offered2000": "GET job, 2000/s offered (100 clients x 20/s)",
             "post_poisson700": "POST, 700/s Poisson (100 connections)",
             "post_poisson1000": "POST, 1000/s Poisson (100 connections)"}  # fmt: skip
    for label, loads in results.items():
        for key, load in loads.items():
            lines.append(f"| {label} | {names.get(key, key)} | {load.row()} |")
    labels = list(results)
    first = results[labels[0]] if labels else {}
    for label in labels[1:]:
        last = results[label]
        if not any(key in first and key in last for key in ("post10", "post100", "get50")):
            continue
        lines += ["", f"Ratios {label} / {labels[0]}:", ""]
        for key in ("post10", "post100", "get50"):
            if key in first and key in last and first[key].rate:
                lines.append(
                    f"- {names[key]}: {last[key].rate / first[key].rate:.1f}x requests/s, "
                    f"p99 {first[key].p(0.99):.0f} -> {last[key].p(0.99):.0f} ms, gateway CPU "
                    f"{first[key].cpu_ms:.2f} -> {last[key].cpu_ms:.2f} ms per request"
                )
    lines += [
        "",
        "![submit latency](figures/submit_latency.png)",
        "",
        "![gateway CPU per request](figures/submit_cpu.png)",
        "",
        "Reading it: on a shared machine requests/s and p99 mostly say how much CPU each gateway "
        "got during its slices; the CPU column says what a request costs it. `hey` keeps C "
        "requests in flight, so mean latency = C / requests/s (Little's law) and p99 >= that mean: "
        "p99 < 50 ms at 100 clients needs more than 2000 requests/s from the gateway, i.e. less "
        "than 0.5 ms of CPU per request on a core of its own, with `hey` and Redis elsewhere.",
    ]
    if any(key in loads for loads in results.values() for key, *_ in OFFERED):
        lines += ["", OFFERED_NOTE]
    if any(key in loads for loads in results.values() for key, *_ in POISSON):
        lines += ["", POISSON_NOTE]
    return "\n".join(lines)


POISSON_NOTE = (
    'The "Poisson" rows are an open loop as independent users make one: requests at exponentially '
    "distributed intervals (benchmarks/open_loop.mjs), 700 or 1000 submits/s over at most 100 "
    "keep-alive connections, each latency counted from when its request was due. `hey -q` is not "
    "that: its 100 clients tick together (about 100 requests leave within 10 ms, then none for 90 "
    "ms, at -q 10), and each waits for its answer before its next tick, so it sends less when the "
    "gateway is slow and its p99 understates what a backlog costs."
)


OFFERED_NOTE = (
    'Closed and offered load: the "N clients" rows are a closed loop: each client sends its next '
    "request when the last is answered, so the gateway is always saturated and latency is the "
    'queue in front of it (Little\'s law above), whatever its speed. The "offered" rows are an '
    "open loop (`hey -q`): 100 clients each send at a fixed rate, 1000 submits/s or 2000 reads/s "
    "in all, as independent users do. Achieved requests/s below the offered rate means the "
    "gateway could not keep up (then latency grows with the backlog); at or near it, p50/p99 are "
    "what a request costs at that traffic, which is what the target (>= 1000 submits/s with p99 < "
    "50 ms) is about. NOTE: hey paces each client on its own clock and waits for its answer, so "
    "a client whose request takes longer than its slot (10 ms or 50 ms) sends less: the achieved "
    "rate also drops when latency exceeds the slot."
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="LABEL=PATH (repeatable)")
    parser.add_argument("--api-workers", default="1", help="comma-separated uvicorn worker counts")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--deep", type=int, default=100_000, help="0 skips the queue-depth part")
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="ROUNDS of alternating slices, all trees up at once",
    )
    parser.add_argument("--interleave-only", action="store_true", help="skip the sequential runs")
    parser.add_argument(
        "--offered",
        action="store_true",
        help="interleaved slices also offer a fixed rate (open loop, hey -q): 100 clients x 10 "
        "submits/s and 100 x 20 reads/s",
    )
    parser.add_argument(
        "--poisson",
        action="store_true",
        help="interleaved slices also offer 700 and 1000 submits/s with Poisson arrivals over 100 "
        "connections (benchmarks/open_loop.mjs, needs node)",
    )
    parser.add_argument(
        "--offered-only",
        action="store_true",
        help="interleaved slices only at the offered rates (with --interleave)",
    )
    parser.add_argument(
        "--depth-only",
        action="store_true",
        help="instead of the sequential runs, only the queue-depth part (1 process) per tree",
    )
    parser.add_argument(
        "--plain",
        action="append",
        default=[],
        metavar="LABEL",
        help="run that tree's gateway with uvloop, httptools and hiredis hidden (as before they "
        "were dependencies); repeatable",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="GENSVC_LOG_LEVEL of the gateways (INFO, the default of the service, logs every "
        "request)",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print only; leave REPORT.md and its figures alone"
    )
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    if not shutil.which("hey"):
        raise SystemExit("hey is not installed (apt-get install hey)")
    specs = [parse_tree(item, set(args.plain)) for item in args.tree] or [Spec("this", ROOT)]
    results: dict[str, dict[str, Load]] = {}
    loads = [os.getloadavg()]
    if args.interleave:
        results = {
            f"{k}, interleaved": v
            for k, v in interleaved(
                specs,
                args.interleave,
                args.seconds,
                args.log_level,
                (OFFERED if args.offered_only else CLOSED + OFFERED if args.offered else CLOSED)
                + (POISSON if args.poisson else ()),
            ).items()  # fmt: skip
        }
        loads.append(os.getloadavg())
    if args.depth_only:
        for spec in specs:
            if spec.workers == 1:
                results[f"{spec.label}, depth"] = depth(
                    spec, args.deep, args.seconds, args.log_level
                )
                loads.append(os.getloadavg())
    for workers in (
        [int(w) for w in args.api_workers.split(",")]
        if not (args.interleave_only or args.depth_only)
        else []
    ):
        for spec in specs:
            name = f"{spec.label}, {workers} proc" if "," in args.api_workers else spec.label
            started = time.monotonic()
            results[name] = measure(
                Spec(spec.label, spec.tree, workers, spec.plain),
                args.seconds,
                args.deep if workers == 1 else 0,
                args.log_level,
            )
            print(f"{name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
            for key, load in results[name].items():
                print(f"  {key}: {load.row()}", file=sys.stderr)
    with_loads = {k: v for k, v in results.items() if "post10" in v}
    if with_loads and not args.no_report:  # a depth-only run leaves the figures alone
        figure(with_loads)
        cpu_figure(
            {
                name: {key: load.cpu_ms for key, load in loads.items()}
                for name, loads in with_loads.items()
            }
        )
    text = report(results, args.deep, args.seconds, args.log_level)
    text += (
        "\n\nLoad average (1 min) of the machine at the start and after each part: "
        + ", ".join(f"{load[0]:.1f}" for load in loads)
        + f" ({os.cpu_count()} CPUs; `hey`, Redis and the gateways share them)."
    )
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {name: {key: {"rate": load.rate, "p50": load.p(0.5), "p99": load.p(0.99), "cpu_ms": load.cpu_ms,
                          "statuses": load.statuses}
                    for key, load in loads.items()} for name, loads in results.items()}, indent=1))  # fmt: skip
    if not args.no_report:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
