"""One-shot device check: full-size SDXL on one CUDA GPU, as the service runs it (numbers, not a test).

Whoever has a CUDA machine for ten minutes runs one command (`make gpu-check`). The script:

1. builds the real SDXL base architecture (2.6 B-parameter UNet, CLIP ViT-L + OpenCLIP bigG text
   encoders, VAE) with random weights from the configs in `engine/sdxl_configs.py` (no hub) and
   saves it as a model folder, with two random LoRA adapters;
2. loads it through `Engine.from_settings` with the service's own defaults (bfloat16 on CUDA,
   channels_last, TF32, SDPA or xFormers) and, for each engine backend that exists
   (GENSVC_ENGINE_BACKEND), measures 1024x1024, 30 steps, CFG: p50 latency at batch 1 and
   images/s at batch 4, with peak memory reset between configurations;
3. times the VAE decode alone, a LoRA switch and the Real-ESRGAN x4 upscale 1024 -> 4096 (tiled,
   fp16 on CUDA);
4. starts the service itself (gateway + one GPU worker on the same folder) and runs 10 jobs
   through the API, reporting API p50 against engine p50.

It writes the `gpu-check` section of benchmarks/REPORT.md and prints a summary. `--smoke` runs the
same code paths on the CPU with a toy-size model in a few minutes (CI runs it).

Random weights give noise images, but the compute (and so the latency) is that of real SDXL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import free_port, write_section  # noqa: E402

# Toy sizes for --smoke: the same component classes, a few million parameters.
_SMOKE_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
SMOKE_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64, 64),
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 1, 1),
    cross_attention_dim=32 + 48,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 48,
    norm_num_groups=8,
    layers_per_block=1,
)
SMOKE_VAE = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
BACKENDS = ("eager", "compile", "onnxruntime")


@dataclass
class Plan:
    """What one run measures (full size on CUDA, toy size with --smoke)."""

    smoke: bool
    size: int
    steps: int
    repeats: int
    budget_s: float
    backends: list[str]
    started: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


# --- 1. the model -----------------------------------------------------------------------------------
def build_model(root: Path, *, smoke: bool, device) -> Path:
    """Write a random-weight SDXL pipeline (+ 2 LoRAs) to root/pipeline and root/loras."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from generative_service.engine import sdxl_configs as sdxl
    from generative_service.engine.tiny import save_sample_lora

    unet_kwargs = {**sdxl.UNET, **(SMOKE_UNET if smoke else {})}
    vae_kwargs = {**sdxl.VAE, **(SMOKE_VAE if smoke else {}), "force_upcast": False}
    te1 = {**sdxl.TEXT_ENCODER, **(_SMOKE_TEXT | {"projection_dim": 32} if smoke else {})}
    te2 = {
        **sdxl.TEXT_ENCODER_2,
        **(_SMOKE_TEXT | {"hidden_size": 48, "projection_dim": 48} if smoke else {}),
    }
    tokenizer, tokenizer_2 = _tokenizers(smoke)
    te1 |= _special_ids(tokenizer, vocab=len(tokenizer))
    te2 |= _special_ids(tokenizer_2, vocab=len(tokenizer_2))
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**vae_kwargs),
            text_encoder=CLIPTextModel(CLIPTextConfig(**te1)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**te2)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=UNet2DConditionModel(**unet_kwargs),
            scheduler=EulerDiscreteScheduler(**sdxl.SCHEDULER),
            add_watermarker=False,
        )
    dtype = torch.float32 if smoke else torch.bfloat16
    pipe.to(dtype=dtype)
    pipe.save_pretrained(root / "pipeline", safe_serialization=True)
    for index, name in enumerate(("style-a", "style-b")):
        save_sample_lora(pipe.unet, root / "loras", name=name, rank=8, seed=100 + index)
    del pipe
    return root


def _tokenizers(smoke: bool):
    from generative_service.engine import sdxl_configs as sdxl
    from generative_service.engine.tokenizer import build_clip_tokenizer

    if not smoke:
        try:
            folder = Path(tempfile.mkdtemp(prefix="gpu-check-tok-"))
            sdxl.write_clip_tokenizers(folder)
            from transformers import CLIPTokenizer

            return (
                CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
            )
        except FileNotFoundError:
            pass  # open_clip not installed: a learned vocabulary of the same size
    corpus = ["a photo of an astronaut riding a horse", "a watercolour of a lighthouse"] * 4
    size = 1000 if smoke else 49408
    return build_clip_tokenizer(corpus, vocab_size=size), build_clip_tokenizer(
        corpus, vocab_size=size
    )


def _special_ids(tokenizer, *, vocab: int) -> dict:
    return {
        "vocab_size": vocab,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# --- 2. the engine ------------------------------------------------------------------------------------
def settings_for(root: Path, cache: Path, *, smoke: bool, backend: str | None = None):
    from generative_service.settings import Settings

    values: dict = dict(
        model=str(root),
        cache_dir=cache,
        lora_dir=root / "loras",
        device="cpu" if smoke else "auto",
        max_batch_images=4,
        default_size=64 if smoke else 1024,
    )
    if backend is not None and "engine_backend" in Settings.model_fields:
        values["engine_backend"] = backend
    return Settings(**values)


def available_backends() -> list[str]:
    """The GENSVC_ENGINE_BACKEND values this version of the service has (eager alone before them)."""
    from generative_service.settings import Settings

    field_info = Settings.model_fields.get("engine_backend")
    if field_info is None:
        return ["eager"]
    choices = getattr(field_info.annotation, "__args__", ())
    return [name for name in BACKENDS if name in choices] or ["eager"]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def jobs_of(batch: int, plan: Plan, *, loras: list | None = None):
    from generative_service.engine import EngineJob
    from generative_service.schemas import GenerationRequest

    return [
        EngineJob(
            f"j{index}",
            GenerationRequest(
                prompt=f"a photo of an astronaut riding a horse, {index}",
                width=plan.size,
                height=plan.size,
                steps=plan.steps,
                guidance_scale=7.5,
                sampler="dpmpp_2m_karras",
                seed=index,
                loras=loras or [],
            ),
        )
        for index in range(batch)
    ]


def time_runs(engine, jobs, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        engine.run(jobs)
        sync()
        times.append(time.perf_counter() - started)
    return times


def measure_backend(backend: str, root: Path, cache: Path, plan: Plan) -> dict | None:
    """p50 at batch 1 and images/s at batch 4 for one backend; None when skipped."""
    from generative_service.engine import Engine

    reserve = 60.0 if backend == "eager" else 240.0
    if plan.left_s() < reserve:
        plan.skipped.append(f"{backend} (time budget)")
        return None
    reset_peak()
    started = time.perf_counter()
    try:
        engine = Engine.from_settings(settings_for(root, cache, smoke=plan.smoke, backend=backend))
        for batch in (1, 4):  # warm-up: compiles / exports / allocator
            engine.run(jobs_of(batch, plan))
    except Exception as exc:  # noqa: BLE001 - report a backend that fails instead of losing the run
        plan.skipped.append(f"{backend} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
        return None
    warm_s = time.perf_counter() - started
    one = time_runs(engine, jobs_of(1, plan), plan.repeats)
    four = time_runs(engine, jobs_of(4, plan), max(2, plan.repeats - 1))
    row = {
        "backend": backend,
        "describe": engine.describe(),
        "p50_1": statistics.median(one),
        "ips_4": 4 / statistics.median(four),
        "warm_s": warm_s,
        "peak_gib": peak_gib(),
        "engine": engine,
    }
    print(
        f"{backend:11s} batch 1 p50 {row['p50_1']:.2f} s, batch 4 {row['ips_4']:.2f} images/s, "
        f"first start {warm_s:.0f} s, peak {row['peak_gib']:.1f} GiB"
    )
    return row


def time_vae(engine, plan: Plan) -> float:
    """Median ms of one VAE decode of a batch-1 latent of the plan's size."""
    import torch

    vae = engine.pipe.vae
    latents = torch.randn(1, 4, plan.size // 8, plan.size // 8, device=vae.device, dtype=vae.dtype)
    with torch.inference_mode():
        vae.decode(latents / vae.config.scaling_factor)
        times = []
        for _ in range(plan.repeats):
            sync()
            started = time.perf_counter()
            vae.decode(latents / vae.config.scaling_factor)
            sync()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def time_lora_switch(engine, plan: Plan) -> dict[str, float]:
    """ms to activate an adapter set (first load, switch between loaded ones, off)."""
    from generative_service.schemas import LoraSpec

    def activate(names: list[str]) -> float:
        sync()
        started = time.perf_counter()
        engine.loras.activate([LoraSpec(name=name, scale=0.8) for name in names])
        sync()
        return (time.perf_counter() - started) * 1000

    first = activate(["style-a"])
    activate(["style-b"])  # both loaded: what follows are switches
    switches = [activate(["style-a" if i % 2 else "style-b"]) for i in range(6)]
    off = activate([])
    return {"first_load_ms": first, "switch_ms": statistics.median(switches), "off_ms": off}


def time_upscale(settings, plan: Plan) -> tuple[float, str] | None:
    """Seconds for Real-ESRGAN x4 of one plan-size image (1024 -> 4096 on GPU), tiled."""
    from PIL import Image

    from generative_service.postprocess.upscaler import Upscaler

    if plan.left_s() < 90:
        plan.skipped.append("upscale (time budget)")
        return None
    upscaler = Upscaler.from_settings(settings).load()
    side = 32 if plan.smoke else plan.size
    image = Image.effect_noise((side, side), 64).convert("RGB")
    upscaler.upscale(image.resize((16, 16)), 4)  # warm-up
    sync()
    started = time.perf_counter()
    out = upscaler.upscale(image, 4)
    sync()
    return time.perf_counter() - started, f"{image.width}->{out.width}"


# --- 4. the service -------------------------------------------------------------------------------------
def through_service(root: Path, cache: Path, plan: Plan, jobs: int = 10) -> dict | None:
    """Gateway + one GPU worker on the same model; `jobs` jobs one after another through the API."""
    import httpx
    from bench_service import Service

    from generative_service.settings import Settings

    if plan.left_s() < (30 if plan.smoke else 120):
        plan.skipped.append("service (time budget)")
        return None
    redis_url = _redis_url()
    if redis_url is None:
        plan.skipped.append("service (no Redis and no redis-server to start)")
        return None
    settings = settings_for(root, cache, smoke=plan.smoke).model_copy(
        update={
            "redis_url": redis_url,
            "key_prefix": f"gpucheck{os.getpid()}",
            "storage_dir": Path(tempfile.mkdtemp(prefix="gpu-check-images-")),
            "batch_window_ms": 0,
        }
    )
    Settings.model_validate(settings.model_dump())
    with tempfile.TemporaryDirectory() as logs:
        threads = 1 if plan.smoke else os.cpu_count() or 2
        service = Service(settings, threads=threads, log_dir=Path(logs))
        try:
            service.start_gateway()
            service.start_worker()
            api, engine = [], []
            body = {"prompt": "a photo of an astronaut", "width": plan.size, "height": plan.size}
            body |= {"steps": plan.steps, "guidance_scale": 7.5}
            with httpx.Client(base_url=service.base_url, timeout=600) as http:
                for index in range(jobs + 1):
                    started = time.perf_counter()
                    answer = http.post(
                        "/v1/jobs", json=body | {"seed": index}, headers={"Prefer": "wait=600"}
                    )
                    job = answer.json()
                    elapsed = time.perf_counter() - started
                    if job.get("status") != "succeeded":
                        plan.skipped.append(
                            f"service (job {job.get('status')}: {job.get('error')})"
                        )
                        return None
                    if index:  # the first one warms the worker
                        api.append(elapsed * 1000)
                        engine.append(job["timings"]["inference_ms"])
        finally:
            service.stop_all()
    return {
        "jobs": jobs,
        "api_p50_ms": statistics.median(api),
        "engine_p50_ms": statistics.median(engine),
    }


def _redis_url() -> str | None:
    """A Redis to run the service on: GENSVC_REDIS_URL, else one on 127.0.0.1:6379 (started if absent)."""
    import subprocess

    from redis import Redis

    url = os.environ.get("GENSVC_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except Exception:  # noqa: BLE001
        pass
    port = free_port()
    try:
        subprocess.run(
            ["redis-server", "--port", str(port), "--save", "", "--daemonize", "yes"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        try:
            Redis.from_url(url, socket_connect_timeout=1).ping()
            return url
        except Exception:  # noqa: BLE001
            time.sleep(0.1)
    return None


# --- report ---------------------------------------------------------------------------------------------
def render(
    plan: Plan, *, device_name: str, rows: list[dict], vae_ms, lora, upscale, service
) -> str:
    import torch

    runtime = rows[0]["describe"].get("runtime", {}) if rows else {}
    lines = [
        "## Device check (full-size SDXL, random weights) — `benchmarks/gpu_check.py`",
        "",
        f"{device_name}; {plan.size}x{plan.size}, {plan.steps} steps, DPM++ 2M Karras, CFG 7.5; "
        f"torch {torch.__version__}; the service's own configuration: {_runtime_text(runtime)}. "
        f"Whole run {time.perf_counter() - plan.started:.0f} s.",
        "",
        "| backend | batch 1 p50 s | batch 4 images/s | first start s | peak GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['p50_1']:.2f} | {row['ips_4']:.2f} | {row['warm_s']:.0f} | {row['peak_gib']:.1f} |"
        )
    lines.append("")
    if vae_ms is not None:
        lines.append(f"- VAE decode alone, batch 1: {vae_ms:.0f} ms")
    if lora is not None:
        lines.append(
            f"- LoRA: first load {lora['first_load_ms']:.0f} ms, switch between loaded adapters "
            f"{lora['switch_ms']:.1f} ms, off {lora['off_ms']:.1f} ms"
        )
    if upscale is not None:
        lines.append(f"- Real-ESRGAN x4 {upscale[1]} (tiled): {upscale[0]:.1f} s")
    if service is not None:
        lines.append(
            f"- Through the API (gateway + 1 worker, {service['jobs']} jobs one at a time): "
            f"API p50 {service['api_p50_ms']:.0f} ms vs engine p50 {service['engine_p50_ms']:.0f} ms "
            f"(+{service['api_p50_ms'] - service['engine_p50_ms']:.0f} ms)"
        )
    if plan.skipped:
        lines += ["", f"Skipped: {'; '.join(plan.skipped)}."]
    if plan.smoke:
        lines += [
            "",
            "Smoke run (CPU, toy sizes): checks the code paths; the numbers say nothing about a GPU.",
        ]
    return "\n".join(lines)


def _runtime_text(runtime: dict) -> str:
    if not runtime:
        return "defaults"
    return ", ".join(f"{key} {value}" for key, value in runtime.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU (what CI runs)")
    parser.add_argument("--budget-s", type=float, default=460.0, help="stop measuring past this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backends", default=None, help="comma list; default: every one that exists"
    )
    parser.add_argument("--no-report", action="store_true", help="do not write REPORT.md")
    parser.add_argument("--out", type=Path, default=None, help="also write the section here")
    args = parser.parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --smoke to check the code paths on the CPU)")
        return 2
    backends = args.backends.split(",") if args.backends else available_backends()
    if args.smoke and not args.backends:
        # torch.compile on a CPU takes minutes per shape: the smoke run leaves it out unless asked
        backends = [name for name in backends if name != "compile"]
    plan = Plan(
        smoke=args.smoke,
        size=64 if args.smoke else 1024,
        steps=2 if args.smoke else 30,
        repeats=1 if args.smoke else args.repeats,
        budget_s=args.budget_s,
        backends=backends,
    )
    if args.smoke:
        torch.set_num_threads(1)  # a small shared CPU: one thread avoids OpenMP stalls
    device = torch.device("cpu" if args.smoke else "cuda")
    device_name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    rows, vae_ms, lora, upscale, service = [], None, None, None, None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root, cache = Path(tmp) / "model", Path(tmp) / "cache"
        built = time.perf_counter()
        build_model(root, smoke=args.smoke, device=device)
        print(f"built and saved random-weight SDXL in {time.perf_counter() - built:.0f} s")
        for backend in backends:
            row = measure_backend(backend, root, cache, plan)
            if row is None:
                continue
            if not rows:  # the service's default backend: the extra measurements
                vae_ms = time_vae(row["engine"], plan)
                lora = time_lora_switch(row["engine"], plan)
            rows.append(row)
            row.pop("engine")
            import gc

            gc.collect()
            reset_peak()
        upscale = time_upscale(settings_for(root, cache, smoke=args.smoke), plan)
        service = through_service(root, cache, plan, jobs=3 if args.smoke else 10)
    text = render(
        plan,
        device_name=device_name,
        rows=rows,
        vae_ms=vae_ms,
        lora=lora,
        upscale=upscale,
        service=service,
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if not args.no_report and not args.smoke:
        write_section("gpu-check", text)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
