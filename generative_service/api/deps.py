"""Request dependencies: the app's settings, Redis clients, job store and storage (`app_*`, read from
`app.state`), and the caller's identity (`caller_owner`).

The dependencies are all `async def` although none waits for anything: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per dependency per request (a submit had four).
NOTE: FastAPI solves every dependency node on every request (cache key, the node's own headers and
query parameters, its sub-dependencies): about a quarter of a submit's CPU went there. The hottest
routes (submit, read a job) therefore take `Request` and read `app.state` themselves
(`submitter_of`, `store_of`), and the caller's owner is one node that is also the Bearer scheme.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from generative_service.api.submit import Submitter
from generative_service.errors import Unauthorized
from generative_service.jobs import JobStore, owner_for_key
from generative_service.settings import Settings
from generative_service.storage import Storage

# auto_error=False: we answer 401 ourselves, in the common error shape.
_BEARER_DESCRIPTION = "One of GENSVC_API_KEYS (only when API keys are configured)."
_bearer = HTTPBearer(auto_error=False, description=_BEARER_DESCRIPTION)


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def app_redis(request: Request) -> Redis:
    return request.app.state.redis


def aredis_of(request: Request) -> AsyncRedis:
    """The app's async Redis client (what `AsyncRedisDep` gives), without a dependency node."""
    from generative_service.api.app import async_redis_for

    return async_redis_for(request.app)


async def app_async_redis(request: Request) -> AsyncRedis:
    return aredis_of(request)


def store_of(request: Request) -> JobStore:
    """The app's job store (what `StoreDep` gives), without a dependency node."""
    return request.app.state.store


async def app_store(request: Request) -> JobStore:
    return store_of(request)


async def app_storage(request: Request) -> Storage:
    return request.app.state.storage


def submitter_of(request: Request) -> Submitter:
    """The app's submit path (what `SubmitterDep` gives), without a dependency node."""
    state = request.app.state
    return Submitter(
        store=state.store, redis=state.redis, aredis=aredis_of(request), settings=state.settings
    )


async def app_submitter(request: Request) -> Submitter:
    return submitter_of(request)


def caller_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> str:
    """The owner id of the caller: `anonymous` without API keys, else derived from the Bearer key.

    Raises:
        Unauthorized: API keys are configured and the request has none or a wrong one.
    """
    settings = request.app.state.settings
    keys: list[str] = [*settings.api_keys, *settings.admin_keys]
    if not settings.api_keys:
        return owner_for_key(None)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Authorization: a Bearer API key is required")
    presented = credentials.credentials.encode()
    # NOTE: compare against every key in constant time so timing does not reveal a prefix.
    matches = [hmac.compare_digest(presented, key.encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("Authorization: the API key is not valid")
    return owner_for_key(credentials.credentials)


class _BearerOwner(HTTPBearer):
    """`caller_owner` as one dependency that is also the Bearer security scheme (the same
    `HTTPBearer` entry in OpenAPI as `_bearer`); on the event loop: it only compares and hashes."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        return caller_owner(request, await super().__call__(request))


_owner = _BearerOwner(auto_error=False, scheme_name="HTTPBearer", description=_BEARER_DESCRIPTION)


SettingsDep = Annotated[Settings, Depends(app_settings)]
RedisDep = Annotated[Redis, Depends(app_redis)]
AsyncRedisDep = Annotated[AsyncRedis, Depends(app_async_redis)]
StoreDep = Annotated[JobStore, Depends(app_store)]
StorageDep = Annotated[Storage, Depends(app_storage)]
OwnerDep = Annotated[str, Depends(_owner)]
SubmitterDep = Annotated[Submitter, Depends(app_submitter)]
