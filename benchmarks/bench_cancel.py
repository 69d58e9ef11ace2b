"""Cancel latency per stage (numbers, not a test): how long a canceled job keeps its worker busy.

A real gateway and one real GPU worker process on the tiny model (CPU). For each stage a job is
sized so that the stage lasts seconds, the benchmark follows its SSE events, sends
`POST /v1/jobs/{id}/cancel` when the stage begins, and measures the time from the cancel answer to
the job's `canceled` event (the worker writes it when it has stopped). It also reports how long the
same stage takes when not canceled, for scale.

    .venv/bin/python benchmarks/bench_cancel.py [--runs 2] [--threads 1] [--only STAGE...]
                                                [--no-full] [--no-report]

Writes the "cancel" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import purge_prefix, write_section  # noqa: E402
from bench_service import Service  # noqa: E402

SECTION = "cancel"

# stage -> (request, the event that starts the stage)
SCENARIOS = {
    "denoising": ({"width": 512, "height": 512, "steps": 60}, ("progress", 3)),
    "vae_decode": ({"width": 1536, "height": 1536, "steps": 1}, ("progress", 1)),
    "safety": ({"width": 1024, "height": 1024, "steps": 1, "num_images": 4}, ("stage", "safety")),
    "upscaling": ({"width": 128, "height": 128, "steps": 2, "upscale": 4}, ("stage", "upscaling")),
    "storing": ({"width": 2048, "height": 2048, "steps": 1, "num_images": 2}, ("stage", "storing")),
}


def _starts(event, trigger) -> bool:
    kind, value = trigger
    if event.type != kind:
        return False
    return event.step == value if kind == "progress" else event.stage == value


def run_once(client, body: dict, trigger, *, cancel: bool) -> dict:
    """Follow one job; with `cancel`, cancel it when `trigger` arrives. Times in seconds."""
    job = client.submit({"prompt": "a red house", "seed": 7, **body})
    out: dict = {"stage_at_cancel": None}
    began = canceled_at = None
    for _, event in client.events(job.id):
        now = time.perf_counter()
        if began is None and _starts(event, trigger):
            began = now
            if cancel:
                client.cancel(job.id)
                canceled_at = time.perf_counter()
                out["stage_at_cancel"] = client.get(job.id).progress.stage
        elif began is not None and not cancel and event.type in ("stage", "succeeded"):
            out.setdefault("stage_s", now - began)
        if event.is_terminal:
            out["status"] = event.type
            out["latency_s"] = now - canceled_at if canceled_at else None
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--no-full", action="store_true", help="skip the uncanceled run per stage (stage s: -)"
    )
    args = parser.parse_args()

    from redis import Redis

    from generative_service.client import Client
    from generative_service.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-cancel-"))
    settings = Settings(model="tiny", device="cpu", key_prefix=f"bench_cancel_{secrets.token_hex(4)}",
                        storage_dir=tmp / "images", upscale_tile=64, worker_heartbeat_s=2,
                        worker_dead_after_s=60, job_timeout_s=1800)  # fmt: skip
    service = Service(settings, threads=args.threads, log_dir=tmp)
    rows = []
    try:
        service.start_gateway()
        service.start_worker()
        with Client(service.base_url, timeout=600) as client:
            for stage in args.only:
                body, trigger = SCENARIOS[stage]
                full = {} if args.no_full else run_once(client, body, trigger, cancel=False)
                runs = [run_once(client, body, trigger, cancel=True) for _ in range(args.runs)]
                latencies = [r["latency_s"] for r in runs if r["latency_s"] is not None]
                row = {
                    "stage": stage,
                    "request": body,
                    "stage_s": full.get("stage_s"),
                    "latency_s": statistics.median(latencies) if latencies else None,
                    "worst_s": max(latencies) if latencies else None,
                    "outcomes": sorted({r["status"] for r in runs}),
                    "seen": sorted({str(r["stage_at_cancel"]) for r in runs}),
                }
                print(row, flush=True)
                rows.append(row)
    finally:
        service.stop_all()
        purge_prefix(Redis.from_url(settings.redis_url), settings.key_prefix)
    if not args.no_report:
        write_section(SECTION, _report(rows, args))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _report(rows: list[dict], args) -> str:
    lines = [
        "## Cancel latency per stage (gateway + one GPU worker, tiny model on CPU) — `benchmarks/bench_cancel.py`",
        "",
        f"{platform.machine()}, {args.threads} torch thread(s), {args.runs} canceled run(s) per stage; "
        "latency = cancel answered -> `canceled` event (the worker has stopped the work). "
        "`stage s` = how long that stage ran when not canceled.",
        "",
        "| stage | request | stage s | cancel latency s (median) | worst s | outcome | stage seen at cancel |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        request = ", ".join(f"{k}={v}" for k, v in row["request"].items())
        lines.append(
            f"| {row['stage']} | {request} | {_fmt(row['stage_s'])} | {_fmt(row['latency_s'])} | "
            f"{_fmt(row['worst_s'])} | {', '.join(row['outcomes'])} | {', '.join(row['seen'])} |"
        )
    lines += [
        "",
        "Cancel points: every denoising step and each UNet block (not with GENSVC_ENGINE_BACKEND=compile), "
        "each VAE decoder convolution, before each image's safety check, before upscaling, while the upscaler's weights load on first use, before every upscaler tile and "
        "convolution, before storing, before each image is encoded and between the blocks a PNG/JPEG encoder writes.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
