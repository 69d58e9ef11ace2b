"""What the benchmark scripts share: REPORT.md sections, percentiles, child processes, Redis cleanup.

The scripts run as `python benchmarks/NAME.py`, so this directory is on sys.path and they import
`_common` directly.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "benchmarks" / "REPORT.md"
FIGURES = ROOT / "benchmarks" / "figures"
T = TypeVar("T")
_HEADER = "# Benchmark report\n\nEach section is written by the script it names; rerun the script to refresh it.\n"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_section(key: str, body: str, *, report: Path = REPORT) -> None:
    """Replace (or append) the section between `<!-- section:KEY -->` markers of REPORT.md."""
    start, end = f"<!-- section:{key} -->", f"<!-- /section:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    # NOTE: several benchmarks may finish at once; the lock keeps one from dropping another's section.
    with open(Path(tempfile.gettempdir()) / "gensvc-bench-report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = report.read_text() if report.exists() else _HEADER
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        text = (
            pattern.sub(lambda _: block, text)
            if pattern.search(text)
            else text.rstrip() + "\n\n" + block + "\n"
        )
        report.write_text(text)


def publish(section: str, text: str, *, report: bool) -> None:
    """Print a benchmark's section; with `report`, also write it into REPORT.md."""
    print(text)
    if report:
        write_section(section, text)


def save_figure(fig, name: str) -> Path:
    """Lay out `fig`, save it as benchmarks/figures/NAME (PNG) and close it."""
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = FIGURES / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pct(values: list[float], q: float) -> float:
    """Nearest-rank q-quantile (0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# Modules the service runs faster with (its dependencies since uvicorn[standard] and
# redis[hiredis]); `plain_pythonpath` hides them to measure a tree as it ran without them.
SPEEDUPS = ("uvloop", "httptools", "hiredis")


def plain_pythonpath(workdir: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes `import uvloop/httptools/hiredis` fail as if
    they were not installed: uvicorn then runs asyncio's loop and h11, redis-py its Python parser."""
    where = workdir / "no-speedups"
    where.mkdir(parents=True, exist_ok=True)
    for name in SPEEDUPS:
        (where / f"{name}.py").write_text(
            f"raise ModuleNotFoundError('hidden by the benchmark', name={name!r})\n"
        )
    return where


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live descendants
    (uvicorn's worker processes), read from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / tick
        todo.extend(children.get(current, []))
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    """True if GET `url` answers 200 (False while nothing listens)."""
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def poll(predicate: Callable[[], T], timeout_s: float) -> T | None:
    """The first truthy value `predicate()` returns within `timeout_s`, else None."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return value


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until true; exit the benchmark naming `what` after `timeout_s`."""
    if not poll(predicate, timeout_s):
        raise SystemExit(f"{what} did not come up within {timeout_s:.0f} s")


def stop_processes(processes, *, timeout_s: float = 30.0) -> None:
    """SIGTERM every child still running, then wait for each (SIGKILL past `timeout_s`)."""
    import signal
    import subprocess

    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()


def purge_prefix(redis, prefix: str) -> None:
    """Delete a run's keys: its own prefix, its RQ queues and registries, and its RQ jobs."""
    from generative_service.keys import Keys

    Keys(prefix).purge(redis, batch=1000)
