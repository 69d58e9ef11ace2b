"""Structured logging: one JSON object per line on stderr, for the gateway and every worker.

Each line has `ts` (ISO-8601 UTC), `level`, `component` (gateway, gpu-worker, webhook-worker...),
`logger`, `event` (the message, by convention a dotted name such as `job.started`) and whatever
the call passes in `extra=` - `job_id`, `batch_id`, `worker_id` above all:

    log = logs.get_logger(__name__)
    log.info("job.started", extra={"job_id": job.id, "batch_id": batch.id, "worker_id": wid})

Prompts are user data: they appear only when `GENSVC_LOG_PROMPTS=true`. Log them through
`prompt_field(settings, text)`; any `prompt`/`negative_prompt` key passed in `extra=` is redacted
by the formatter too, so a forgotten call cannot leak one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from generative_service.settings import Settings

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# (uvicorn adds `color_message`, the same text with ANSI colours.)
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
PROMPT_KEYS = ("prompt", "negative_prompt")
# Loggers of libraries we run under; they get our handler through the root logger.
_THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker", "rq.job", "rq.scheduler")


def prompt_field(settings: Settings, text: str) -> str | dict[str, Any]:
    """The prompt itself when LOG_PROMPTS is on, else its length and a short hash (to correlate)."""
    if settings.log_prompts:
        return text
    return redact(text)


def redact(text: str) -> dict[str, Any]:
    """A prompt's length and the first 12 hex digits of its SHA-256, never the text."""
    return {"chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()[:12]}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (never multi-line: tracebacks go in `exc`)."""

    def __init__(self, component: str, *, log_prompts: bool = False) -> None:
        super().__init__()
        self.component = component
        self.log_prompts = log_prompts

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _RECORD_ATTRS or key.startswith("_") or key in line:
                continue
            if key in PROMPT_KEYS and not self.log_prompts and isinstance(value, str):
                value = redact(value)
            line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler):
    """Marker class so `configure` can find and replace its own handler."""


def configure(settings: Settings, component: str, *, stream: TextIO | None = None) -> None:
    """Send every log record of this process to `stream` (stderr) as JSON lines.

    Idempotent: calling it again (a test, a CLI re-entry) replaces the previous handler.
    NOTE: uvicorn must run with `log_config=None`, or it installs its own plain-text handlers
    after this; RQ workers should get `logging_level=settings.log_level`.

    Args:
        settings: uses `log_level` and `log_prompts`.
        component: the process role written on every line (`gateway`, `gpu-worker`, ...).
        stream: where lines go; default `sys.stderr` (looked up at call time).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _JsonHandler):
            root.removeHandler(handler)
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(component, log_prompts=settings.log_prompts))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _THIRD_PARTY:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
        library_logger.setLevel(settings.log_level)
    # Chatty libraries stay at WARNING unless we debug.
    for name in ("httpx", "httpcore", "urllib3", "PIL", "filelock"):
        logging.getLogger(name).setLevel(
            logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
        )


def get_logger(name: str) -> logging.Logger:
    """A standard library logger; `configure` decides where and how its lines go."""
    return logging.getLogger(name)
