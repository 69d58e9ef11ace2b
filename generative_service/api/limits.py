"""Request body size limit (413): checks `Content-Length` up front and counts streamed bytes.

A chunked upload that announces no length is cut off as soon as it passes the limit.
LoRA uploads get their own, larger limit (GENSVC_MAX_LORA_BYTES plus room for multipart framing).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from generative_service.api.errors import error_json
from generative_service.settings import Settings

MULTIPART_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parser re-raises it unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413, detail=f"body: request body is larger than the limit of {limit} bytes"
        )


def body_limit(settings: Settings, scope: Scope) -> int:
    """The largest body accepted for this request."""
    if scope.get("method") in ("POST", "PUT") and scope.get("path", "").startswith("/v1/loras"):
        return settings.max_lora_bytes + MULTIPART_OVERHEAD
    return settings.max_request_bytes


class BodySizeLimit:
    """ASGI middleware enforcing `body_limit`."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = error_json(
                413,
                "payload_too_large",
                f"body: Content-Length {declared} is larger than the limit of {limit} bytes",
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
