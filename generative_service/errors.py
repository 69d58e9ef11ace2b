"""One base exception; subclasses named for what went wrong. Mapped to HTTP in `api/errors.py` only.

Engine, post-processing and storage raise these; the gateway turns them into
`{"error": {"code", "message", "details"}}` with the class's `status_code`.
A worker turns them into `status=failed` with `error.code = exc.code`.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ServiceError):
    """Bad input. `field` names the offending request field (dotted path, e.g. `control.image`)."""

    status_code = 422
    code = "invalid_request"

    def __init__(self, field: str, reason: str, *, details: Any = None) -> None:
        super().__init__(f"{field}: {reason}", details=details)
        self.field = field
        self.reason = reason


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class QueueFull(ServiceError):
    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class ServerTimeout(ServiceError):
    """The compatibility APIs answer when the job is done; it was not done within their wait."""

    status_code = 504
    code = "timeout"


class Unavailable(ServiceError):
    """Redis or workers unavailable; `retry_after_s` becomes the Retry-After header."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class ModelLoadError(ServiceError):
    """A configured model path is missing or broken. `setting` names the GENSVC_ setting."""

    code = "model_load_error"

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"GENSVC_{setting.upper()}: {reason}")
        self.setting = setting


class LoraError(InvalidRequest):
    """A LoRA adapter file is missing, broken or incompatible with the base model."""

    code = "invalid_lora"


class JobCanceled(ServiceError):
    """Raised inside a running batch when every job in it was canceled."""

    code = "canceled"


class GenerationFailed(ServiceError):
    """A batch failed for a reason that is not the request's fault (OOM, hung device, ...)."""

    code = "generation_failed"


class WorkerLost(ServiceError):
    """The worker running a job died or stopped answering."""

    code = "worker_lost"
