"""The gateway's app factory. It validates, enqueues and reads state; it never imports torch."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from redis.asyncio import Redis as AsyncRedis
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE
from starlette.types import ASGIApp

from generative_service.api import errors
from generative_service.api.limits import BodySizeLimit
from generative_service.api.routes import (
    a1111,
    evals,
    events,
    health,
    jobs,
    metrics,
    models,
    openai_compat,
    web,
)
from generative_service.api.security import SecurityHeaders
from generative_service.errors import ServiceError
from generative_service.jobs import JobStore
from generative_service.logs import get_logger
from generative_service.redis_client import async_redis, sync_redis
from generative_service.settings import Settings, get_settings
from generative_service.storage import get_storage

DESCRIPTION = """\
Asynchronous text-to-image: submit a job, get its id at once (202), follow it over Server-Sent
Events or a signed webhook, download the images.

**Errors** always look like `{"error": {"code", "message", "details"}}`; for bad input the
message starts with the field, e.g. `width: must be a multiple of 8, got 65`.

**Auth**: when the server has API keys (`GENSVC_API_KEYS`), every `/v1` route needs
`Authorization: Bearer KEY`, and each key sees only its own jobs.
"""
TAGS = [
    {"name": "jobs", "description": "Submit, follow, cancel and download generation jobs."},
    {"name": "models", "description": "What the workers serve; LoRA adapter files."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {
        "name": "evals",
        "description": "Blind A/B evaluation studies rated by people (see docs/evaluation.md).",
    },
    {
        "name": "openai",
        "description": "OpenAI Images API (`base_url=http://HOST:PORT/openai/v1`): one job per call, answered when done.",
    },
    {
        "name": "automatic1111",
        "description": "AUTOMATIC1111 web UI API (`/sdapi/v1`): txt2img with `<lora:name:scale>` prompts, answered when done.",
    },
]
log = get_logger(__name__)
# What a web page on a GENSVC_CORS_ORIGINS origin may send and read (EventSource needs only GET).
CORS_METHODS = ["GET", "POST", "DELETE"]
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID"]
CORS_EXPOSED = ["Location", "Retry-After", "Preference-Applied"]
# operationIds (the method names SDK generators make): camelCase of the route function, except these.
OPERATION_IDS = {
    "job_events": "streamJobEvents",
    "get_image": "getJobImage",
    "upload_lora_form": "uploadLora",
    "upload_lora_raw": "uploadLoraBytes",
    "healthz": "getHealth",
    "readyz": "getReadiness",
}
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0
POOL_WARM_S = 2.0  # longest the gateway's start waits for its Redis connections
GC_YOUNG_THRESHOLD = 10_000  # the collector's first threshold while serving (see _ServingGc)


def _version() -> str:
    try:
        return metadata.version("generative-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def operation_id(route: APIRoute) -> str:
    """`submit_job` -> `submitJob`; a route's own `operation_id` wins (FastAPI asks only without)."""
    name = OPERATION_IDS.get(route.name, route.name)
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def async_redis_for(app: FastAPI) -> AsyncRedis:
    """The app's async Redis client for the running event loop (made lazily when no lifespan ran)."""
    loop = asyncio.get_running_loop()
    if app.state.async_redis is None or app.state.async_redis_loop is not loop:
        app.state.async_redis = _async_redis(app.state.settings)
        app.state.async_redis_loop = loop
    return app.state.async_redis


def _async_redis(settings: Settings) -> AsyncRedis:
    # Bounded pool: SSE streams and Prefer-wait borrow a connection for at most ~1 s at a time
    # and wait for a free one instead of opening more.
    client = async_redis(
        settings,
        max_connections=settings.gateway_redis_connections,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    pack_commands_in_c(client)
    return client


class _PacksWithHiredis:
    """Mixed in front of an asyncio connection class: commands packed by hiredis (C)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args):  # noqa: ANN002, ANN201 - redis-py's own signature
        return self._packer.pack(*args)


def pack_commands_in_c(client: AsyncRedis) -> None:
    """Have `client`'s connections pack commands with hiredis, as redis-py's sync connections do
    when it is installed. NOTE: redis-py's asyncio connections always pack in Python: a submit
    script call (~70 arguments) took ~130 us of the event loop's CPU that way, ~12 us in C; the
    bytes are the same. Call before the pool opens its first connection."""
    pool = client.connection_pool
    if HIREDIS_AVAILABLE and not issubclass(pool.connection_class, _PacksWithHiredis):
        base = pool.connection_class
        pool.connection_class = type(base.__name__, (_PacksWithHiredis, base), {})


async def _warm_pool(client: AsyncRedis, count: int) -> None:
    """Open the async pool's connections one after another before serving (best effort, at most
    POOL_WARM_S). Opened lazily, a burst of clients at start makes as many connects at once, each
    waiting on a busy event loop for its handshake: past the connect timeout they fail as 503s."""
    pool = client.connection_pool
    opened: list = []

    async def open_all() -> None:
        for _ in range(count):
            opened.append(await pool.get_connection())

    try:
        await asyncio.wait_for(open_all(), POOL_WARM_S)
    except (RedisError, OSError, TimeoutError) as exc:  # Redis down or slow: connect when asked
        log.warning("redis.pool_not_warmed", extra={"opened": len(opened), "error": str(exc)})
    finally:
        for connection in opened:
            await pool.release(connection)


class _ServingGc:
    """The cyclic garbage collector while at least one app of this process serves: what was
    built before serving is frozen and the first threshold raised; both undone when the last
    app stops (tests start and stop many apps in one process).

    NOTE: the app, its routes and schemas are ~130 000 objects that live as long as the
    process. Unfrozen, every full collection walked them all (~200 ms here: a pause of every
    request in flight); frozen (gc.freeze), collections walk only what was made since. And a
    request's objects die by reference counting: at the default 700 the collector still ran
    every few requests under load, walking the objects of every request in flight.
    """

    serving = 0
    saved: tuple[int, int, int] = (700, 10, 10)

    @classmethod
    def start(cls) -> None:
        if cls.serving == 0:
            cls.saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(cls.saved[0], GC_YOUNG_THRESHOLD), *cls.saved[1:])
        cls.serving += 1

    @classmethod
    def stop(cls) -> None:
        cls.serving -= 1
        if cls.serving == 0:
            gc.unfreeze()
            gc.set_threshold(*cls.saved)


def _ensure_bucket(storage) -> None:
    """Create a missing bucket at start (best effort: the gateway also starts without it)."""
    try:
        if storage.store.ensure_bucket():
            log.info("storage.bucket_created", extra={"bucket": storage.store.bucket})
    except ServiceError as exc:
        log.warning("storage.bucket_unchecked", extra={"error": exc.message})


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Async connections belong to one event loop: make the client inside the server's loop.
    app.state.async_redis = _async_redis(app.state.settings)
    app.state.async_redis_loop = asyncio.get_running_loop()
    await _warm_pool(app.state.async_redis, app.state.settings.gateway_redis_connections)
    if app.state.settings.storage_url:
        await asyncio.to_thread(_ensure_bucket, app.state.storage)
    _ServingGc.start()
    try:
        yield
    finally:
        _ServingGc.stop()
        # Both clients were given their pools, so closing a client leaves its pool's sockets open
        # (redis-py closes only pools it made): close the pools, or every app that starts and stops
        # in one process (tests, reloads) leaves its warmed connections behind.
        await app.state.async_redis.aclose(close_connection_pool=True)
        app.state.redis.close()
        app.state.redis.connection_pool.disconnect()


def _with_security_headers(app: FastAPI) -> None:
    """Wrap `app`'s whole middleware stack, Starlette's ServerErrorMiddleware included, in
    SecurityHeaders. NOTE: as an ordinary user middleware it sat inside ServerErrorMiddleware,
    and unhandled 500s went out without the headers."""
    build = app.build_middleware_stack

    def build_with_headers() -> ASGIApp:
        return SecurityHeaders(build())

    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway. `settings` defaults to the environment (`GENSVC_*`)."""
    settings = settings or get_settings()
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the service itself (the
    # fastapi-offline package ships them), so the pages work on a host without internet.
    app = FastAPIOffline(
        title="generative-service",
        version=_version(),
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.redis = sync_redis(
        settings,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    app.state.async_redis = None
    app.state.async_redis_loop = None
    app.state.store = JobStore(app.state.redis, settings)
    app.state.storage = get_storage(settings)
    errors.install(app)
    _with_security_headers(app)
    app.add_middleware(BodySizeLimit, settings=settings)
    if settings.cors_origins:  # added last: outermost, so errors and 413s carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
            max_age=600,
        )
    for module in (jobs, events, models, health, metrics, evals):
        app.include_router(module.router)
    openai_compat.install(app)
    a1111.install(app)
    web.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI document, with FastAPI's default 422 schema replaced by our error shape."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for operation in (op for item in schema["paths"].values() for op in item.values()):
            invalid = operation.get("responses", {}).get("422")
            if invalid and "HTTPValidationError" in str(invalid):
                operation["responses"]["422"] = {
                    "description": "Invalid field; the message names it.",
                    "content": {"application/json": {"schema": error_ref}},
                }
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema
