"""The one place errors become HTTP: `{"error": {"code", "message", "details"}}` for every failure.

Bad input names the field (`width: must be a multiple of 8, got 65`); Redis trouble is a 503;
anything unexpected is a 500 with no stack trace (the trace goes to the log only).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from generative_service.errors import (
    InvalidRequest,
    QueueFull,
    ServiceError,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("generative_service.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}
_SHOULD = re.compile(r"^(Input|String|List|Value|Dictionary|Object|Tuple|Set) should ")
_SOURCES = ("body", "query", "path", "header", "cookie")


# A compatibility API answers errors in its own clients' shape:
# (status, code, message, details, field or None) -> (body, extra headers).
ErrorShape = Callable[[int, str, str, Any, str | None], tuple[dict, dict[str, str]]]


def error_json(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A response in the common error shape."""
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def register_shape(app: FastAPI, prefix: str, shape: ErrorShape) -> None:
    """Errors on paths under `prefix` (e.g. `/openai/`) are written by `shape`."""
    app.state.error_shapes = {**getattr(app.state, "error_shapes", {}), prefix: shape}


def _respond(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    field: str | None = None,
) -> JSONResponse:
    shapes: dict[str, ErrorShape] = getattr(request.app.state, "error_shapes", {})
    path = request.url.path
    for prefix, shape in shapes.items():
        if path.startswith(prefix):
            body, extra = shape(status, code, message, details, field)
            return JSONResponse(body, status_code=status, headers={**(headers or {}), **extra})
    return error_json(status, code, message, details, headers)


def field_name(loc: tuple | list) -> str:
    """`("body", "loras", 0, "name")` -> `loras[0].name`; a bare source -> `body`."""
    parts = list(loc)
    source = parts.pop(0) if parts and parts[0] in _SOURCES else "body"
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    if source == "header":
        name = "-".join(word.capitalize() for word in name.split("-"))
    return name or source


def _reason(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "json_invalid":
        return f"invalid JSON: {error.get('ctx', {}).get('error', 'decode error')}"
    if kind in ("model_attributes_type", "dict_type", "model_type"):
        return "must be a JSON object"
    message = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = _SHOULD.sub("must ", message)
    value = error.get("input")
    if isinstance(value, (int, float, str, bool)) and "got" not in message:
        # Query, path and header values are always strings: show them as typed, unquoted.
        from_url = bool(error.get("loc")) and error["loc"][0] in ("query", "path", "header")
        shown = value if from_url and isinstance(value, str) else repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        message += f", got {shown}"
    return message


def validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Pydantic/FastAPI errors as `[{field, message, type}]` with readable messages."""
    out = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            loc = loc[:1]  # the second item is the character position, not a field
        out.append(
            {
                "field": field_name(loc),
                "message": _reason(error),
                "type": str(error.get("type", "")),
            }
        )
    return out


def first_problem(exc: ValidationError) -> InvalidRequest:
    """The first field error of a model built by hand (the compatibility APIs build our request
    from theirs), as the InvalidRequest the gateway's own checks raise."""
    first = validation_details(list(exc.errors()))[0]
    return InvalidRequest(first["field"], first["message"])


def validation_parts(errors: list[dict]) -> tuple[int, str, str, list[dict[str, str]]]:
    """(status, code, message, details) of a validation failure: 422, or 400 for malformed JSON."""
    details = validation_details(errors)
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    message = "; ".join(f"{item['field']}: {item['message']}" for item in details[:3])
    if len(details) > 3:
        message += f" (and {len(details) - 3} more)"
    return status, "bad_request" if status == 400 else "invalid_request", message, details


def validation_response(errors: list[dict]) -> JSONResponse:
    """422 (400 for malformed JSON) naming every bad field; the message carries the first ones."""
    return error_json(*validation_parts(errors))


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull | Unavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="gensvc"'
    field = exc.field if isinstance(exc, InvalidRequest) else None
    return _respond(request, exc.status_code, exc.code, exc.message, exc.details, headers, field)


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    status, code, message, details = validation_parts(list(exc.errors()))
    return _respond(
        request, status, code, message, details, None, details[0]["field"] if details else None
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = str(exc.detail)
    if status == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    if status == 400 and message == "There was an error parsing the body":
        # FastAPI's words for a body json.loads() raised on (not JSONDecodeError): say which ways.
        message = "body: cannot be parsed as JSON (not UTF-8, an integer of thousands of digits, or nested too deep)"
    headers = dict(exc.headers or {})
    if status == 405:
        allowed = _allowed_methods(request) or headers.get("Allow", "")
        headers["Allow"] = allowed
        message = f"method {request.method} is not allowed on {request.url.path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    return _respond(request, status, _HTTP_CODES.get(status, "http_error"), message, None, headers)


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route matching the path; ask every route about every method.
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return _respond(
        request, 503, "unavailable", "Redis is unavailable; retry later", None, {"Retry-After": "5"}
    )


async def _redis_refused(request: Request, exc: Exception) -> JSONResponse:
    if str(exc).startswith(("NOREPLICAS", "MASTERDOWN", "LOADING", "TRYAGAIN")):
        return await _redis_down(request, exc)
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(
        request, 500, "internal_error", "internal server error; the gateway log has the details"
    )


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    # A demoted master during a Sentinel failover refuses writes (READONLY), as does a master
    # short of replicas (NOREPLICAS, min-replicas-to-write): both are "retry shortly".
    app.add_exception_handler(redis.exceptions.ReadOnlyError, _redis_down)
    app.add_exception_handler(redis.exceptions.ResponseError, _redis_refused)
    app.add_exception_handler(Exception, _unexpected)
