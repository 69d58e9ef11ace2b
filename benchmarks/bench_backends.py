"""CPU benchmark of the engine backends (eager, onnxruntime, compile) side by side (numbers, not a test).

For each model (tiny, demo), one child process per backend (so peak RSS is its own). The
children start one after another on empty caches (first start: ONNX export / torch.compile
warm-up included), then stay up while the parent times them **interleaved**: each round runs
batch 1, 2 and 4 on every child in turn (the order rotating each round), so a change of the
machine's load hits every backend alike. Then per child: the first use of a new LoRA set,
peak RSS, and a second start on the filled cache (onnxruntime, compile). Pixel differences
from eager (same seeds): batch 1/2/4, a canny ControlNet job and a LoRA job.

    nice -n 5 .venv/bin/python benchmarks/bench_backends.py [--models tiny,demo]
        [--backends eager,onnxruntime,compile:mark_dynamic,compile:dynamic,compile:pad]
        [--steps 10] [--repeats 3] [--no-report]

`compile:STRATEGY` is GENSVC_ENGINE_BACKEND=compile with GENSVC_COMPILE_BATCH=STRATEGY (how one
graph serves every batch size); each gets its own empty inductor cache.

Writes the "engine-backends" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import resource
import secrets
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

from _common import write_section  # noqa: E402

LORAS = {"tiny": "tiny-style-a", "demo": "pastel"}
PROMPTS = {"tiny": "a photo of a cat", "demo": "a red circle above a blue square"}
BATCHES = (1, 2, 4)
STRATEGIES = ("mark_dynamic", "dynamic", "pad")
REPLY = "@@bench "  # marks the child's answers among whatever else it prints


# --- child: one model on one backend, answering the parent's requests ------------------------------


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from generative_service.engine import Engine, EngineJob
    from generative_service.schemas import ControlSpec, GenerationRequest, LoraSpec
    from generative_service.settings import Settings

    backend, _, strategy = args.backend.partition(":")
    settings = Settings(
        model=args.model,
        cache_dir=args.cache_dir,
        engine_backend=backend,
        compile_batch=strategy or "mark_dynamic",
        compile_compiler=args.compiler,
        lora_hotswap_rank=16 if backend == "compile" else 0,
        key_prefix=f"bench_backends_{secrets.token_hex(4)}",
        embedding_cache_ttl_s=0,
    )
    started = time.perf_counter()
    engine = Engine.from_settings(settings)
    ready: dict = {"start_s": time.perf_counter() - started}
    if backend == "compile":
        ready["compile_s"] = engine.backend.compile_seconds
    _answer(ready)
    if args.start_only:
        return

    def jobs(batch: int, case: str) -> list:
        control = None
        if case == "canny":
            control = ControlSpec(type="canny", image=_control_image(engine.default_size))
        return [
            EngineJob(
                f"j{i}",
                GenerationRequest(
                    prompt=PROMPTS[args.model],
                    width=engine.default_size,
                    height=engine.default_size,
                    steps=args.steps,
                    seed=100 + i,
                    guidance_scale=5.0,
                    control=control,
                    loras=[LoraSpec(name=LORAS[args.model], scale=1.0)] if case == "lora" else [],
                ),
            )
            for i in range(batch)
        ]

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            return
        if request.get("op") == "rss":
            _answer({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            continue
        group = jobs(request["batch"], request["case"])
        tick = time.perf_counter()
        outputs = engine.run(group)
        elapsed = time.perf_counter() - tick
        if request.get("save"):
            pixels = np.stack([np.asarray(out.images[0]) for out in outputs])
            np.save(Path(args.out) / f"{request['save']}.npy", pixels)
        ran = outputs[0].reproducibility.get("backend", {}).get("ran")
        _answer({"s": elapsed, "ran": ran})


def _answer(data: dict) -> None:
    print(REPLY + json.dumps(data), flush=True)


def _control_image(size: int) -> str:
    """A picture with edges for the canny ControlNet: a bright disc and a dark bar on a gradient."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    picture = (xx * 255 // size).astype(np.uint8)
    picture[(xx - size // 2) ** 2 + (yy - size // 3) ** 2 < (size // 5) ** 2] = 255
    picture[size // 8 : size // 8 + 4, :] = 0
    buffer = io.BytesIO()
    Image.fromarray(np.stack([picture] * 3, axis=-1)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- parent: start the children, time them interleaved, compare, report ----------------------------


class Child:
    """One backend's child process; `ask` sends a request and waits for its answer."""

    def __init__(
        self, args, *, model: str, backend: str, cache_dir: Path, out: Path, start_only=False
    ):
        self.name = f"{model}/{backend}"
        argv = [
            sys.executable,
            __file__,
            "--child",
            "--model",
            model,
            "--backend",
            backend,
            "--cache-dir",
            str(cache_dir),
            "--out",
            str(out),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--compiler",
            args.compiler,
        ] + (["--start-only"] if start_only else [])
        self.log = out.parent / f"{model}-{_file(backend)}{'-again' if start_only else ''}.log"
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            cwd=ROOT,
        )
        self.ready = self._reply()

    def ask(self, **request) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
        except BrokenPipeError:  # a start-only child has already gone
            pass
        self.process.wait(timeout=120)

    def _reply(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        tail = self.log.read_text()[-3000:]
        raise SystemExit(f"{self.name} stopped (exit {self.process.wait()}):\n{tail}")


def measure_model(args, model: str, backends: list[str], tmp: Path) -> dict:
    """Every backend of one model: starts, interleaved timing, exactness, LoRA, RSS, cached start."""
    out = tmp / "images"
    results: dict = {backend: {"ran": set()} for backend in backends}
    children: dict[str, Child] = {}
    try:
        for backend in backends:  # one at a time: each first start has the machine to itself
            cache_dir = tmp / f"cache-{model}-{_file(backend)}"  # empty: the first start pays
            results[backend]["load_at_start"] = _load()
            children[backend] = Child(
                args, model=model, backend=backend, cache_dir=cache_dir, out=out
            )
            results[backend].update(children[backend].ready)
            print(f"{model}/{backend} started: {children[backend].ready}", flush=True)
        # Untimed first calls (oneDNN kernels, ORT allocations) that also give the images compared.
        for backend, process in children.items():
            for batch in BATCHES:
                saved = process.ask(
                    batch=batch, case="base", save=f"{model}-{_file(backend)}-b{batch}"
                )
                results[backend]["ran"].add(saved["ran"])
            process.ask(batch=1, case="canny", save=f"{model}-{_file(backend)}-canny")
        times: dict = {backend: {batch: [] for batch in BATCHES} for backend in backends}
        loads = [_load()]
        for round_ in range(args.repeats):
            order = backends[round_ % len(backends) :] + backends[: round_ % len(backends)]
            for batch in BATCHES:
                for backend in order:
                    timed = children[backend].ask(batch=batch, case="base")
                    times[backend][batch].append(timed["s"])
                    results[backend]["ran"].add(timed["ran"])
            loads.append(_load())
        for backend, process in children.items():
            first = process.ask(batch=1, case="lora", save=f"{model}-{_file(backend)}-lora")["s"]
            again = process.ask(batch=1, case="lora")["s"]
            data = results[backend]
            data["lora_extra_s"] = first - again
            data["peak_rss_mb"] = process.ask(op="rss")["peak_rss_mb"]
            data["s_per_image"] = {
                batch: statistics.median(times[backend][batch]) / batch for batch in BATCHES
            }
            data["timing_load"] = (min(loads), max(loads))
            data["times_s"] = times[backend]  # every timed call (--json), to see the spread
    finally:
        for process in children.values():
            process.close()
    for backend in backends:
        data = results[backend]
        data["ran"] = sorted(data["ran"])
        if backend != "eager":
            again = Child(
                args,
                model=model,
                backend=backend,
                cache_dir=tmp / f"cache-{model}-{_file(backend)}",
                out=out,
                start_only=True,
            )
            data["cached_start_s"] = again.ready["start_s"]
            again.close()
        names = [*(f"b{batch}" for batch in BATCHES), "canny", "lora"]
        data["diffs"] = {name: max_diff(out, model, backend, name) for name in names}
        print(f"{model}/{backend}: {json.dumps(data)}", flush=True)
    return results


def _file(backend: str) -> str:
    return backend.replace(":", "-")


def _load() -> float:
    return os.getloadavg()[0]


def max_diff(out: Path, model: str, backend: str, name: str) -> int:
    import numpy as np

    ours = np.load(out / f"{model}-{_file(backend)}-{name}.npy").astype(np.int16)
    eager = np.load(out / f"{model}-eager-{name}.npy").astype(np.int16)
    return int(np.abs(ours - eager).max())


def render(results: dict, args) -> str:
    lines = [
        "## Engine backends on CPU (eager vs onnxruntime vs compile)",
        "",
        f"`benchmarks/bench_backends.py`: {args.steps} steps DPM++ 2M Karras, CFG (guidance 5), the",
        f"model's default size, {args.threads} thread(s), median of {args.repeats} rounds. One child",
        "process per model and backend, all up at once and timed interleaved (each round runs batch",
        "1, 2, 4 on every backend in turn, the order rotating), so the machine's load falls on all",
        "alike; the ratios to eager are the comparison, absolute times move with the load.",
        f"{platform.machine()}, Python {platform.python_version()}, a shared 2-core machine; load",
        f"average (1 min) {args.load_before:.1f} at the start, {args.load_after:.1f} at the end of the run;",
        "during each model's timed rounds: "
        + ", ".join(
            f"{model} {_span(next(iter(per_backend.values()))['timing_load'])}"
            for model, per_backend in results.items()
        )
        + ".",
        "",
        "| model | backend | s / image b1 / b2 / b4 | vs eager b1 / b2 / b4 | first start (s) "
        "| of which compiling (s) | start, cache filled (s) | first use of a new LoRA set (s extra) "
        "| peak RSS (MB) | max pixel diff vs eager b1 / b2 / b4 / canny / LoRA (of 255) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for model, per_backend in results.items():
        eager = per_backend["eager"]["s_per_image"]
        for backend, data in per_backend.items():
            speed = data["s_per_image"]
            cached, compiling = data.get("cached_start_s"), data.get("compile_s")
            ran = "" if data["ran"] == [backend.partition(":")[0]] else f" (ran: {data['ran']})"
            lines.append(
                f"| {model} | {backend}{ran} "
                f"| {' / '.join(f'{speed[b]:.3f}' for b in BATCHES)} "
                f"| {' / '.join(f'{eager[b] / speed[b]:.2f}x' for b in BATCHES)} "
                f"| {data['start_s']:.1f} (load {data['load_at_start']:.1f}) "
                f"| {f'{compiling:.1f}' if compiling is not None else '-'} "
                f"| {f'{cached:.1f}' if cached is not None else '-'} "
                f"| {data['lora_extra_s']:.2f} | {data['peak_rss_mb']:.0f} "
                f"| {' / '.join(str(value) for value in data['diffs'].values())} |"
            )
    lines += [
        "",
        "First start: loading the model plus, for onnxruntime, exporting the UNet, ControlNet(s) and",
        "VAE decoder to an empty cache, and for compile, compiling the UNet graph of the served size",
        "(empty inductor cache; 'of which compiling') and the one-step real-job check; 'load' is the",
        "load average when it began. 'Start, cache filled': a second process on the same cache.",
        "First use of a LoRA set: the extra seconds of the first call with it over the next one",
        "(onnxruntime: export of its fused UNet graph; compile: hot-swap into a slot; eager: loading",
        "the adapter). Pixel differences: the same seeds' images against eager's (batch 1, 2, 4,",
        "one canny ControlNet job, one LoRA job). Every call ran on the backend of its row",
        "(`reproducibility.backend.ran`), unless the row says otherwise.",
    ]
    return "\n".join(lines)


def _span(loads: tuple[float, float]) -> str:
    return f"{loads[0]:.1f}-{loads[1]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,demo")
    parser.add_argument(
        "--backends",
        default="eager,onnxruntime," + ",".join(f"compile:{name}" for name in STRATEGIES),
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compiler",
        default="inductor",
        help="GENSVC_COMPILE_COMPILER of the compile backends (eager: trace only, to try the script)",
    )
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    args.load_before = _load()
    backends = ["eager", *(b for b in args.backends.split(",") if b and b != "eager")]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as name:
        tmp = Path(name)
        (tmp / "images").mkdir()
        for model in args.models.split(","):
            results[model] = measure_model(args, model, backends, tmp)
    args.load_after = _load()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=list))
    body = render(results, args)
    print(body)
    if not args.no_report:
        write_section("engine-backends", body)


if __name__ == "__main__":
    main()
