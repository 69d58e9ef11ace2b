"""Run every CPU benchmark in turn; each prints its numbers and rewrites its REPORT.md section.

    python -m benchmarks.run_all [--only engine,service,...] [--skip postprocess]

`gpu_sdxl.py` is not included: run it on a CUDA machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "engine": "bench_engine.py",
    "service": "bench_service.py",
    "load": "load.py",
    "quality": "quality.py",
    "postprocess": "bench_postprocess.py",  # last: the 512 px upscale takes minutes on a CPU
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    args = parser.parse_args(argv)
    chosen = [name for name in args.only.split(",") if name and name not in args.skip.split(",")]
    unknown = [name for name in chosen if name not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(SCRIPTS)}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    failed = []
    for name in chosen:
        print(f"== {name}: {SCRIPTS[name]}", flush=True)
        if subprocess.call([sys.executable, str(HERE / SCRIPTS[name])], env=env) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
