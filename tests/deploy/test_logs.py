"""Structured logs: one JSON object per line, context fields, level from settings, prompts redacted."""

from __future__ import annotations

import io
import json
import logging

import pytest

from generative_service import logs
from generative_service.settings import Settings


@pytest.fixture
def capture():
    """configure() into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level

    def start(**settings: object) -> io.StringIO:
        buffer = io.StringIO()
        logs.configure(Settings(**settings), "test-component", stream=buffer)
        return buffer

    yield start
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_lines_are_json_with_context_fields(capture):
    buffer = capture()
    logs.get_logger("t").info(
        "batch.started",
        extra={"job_id": "job_1", "batch_id": "b_1", "worker_id": "w_1", "jobs": ["job_1"]},
    )
    [line] = lines(buffer)
    assert (
        line["event"] == "batch.started"
        and line["level"] == "INFO"
        and line["component"] == "test-component"
    )
    assert (line["job_id"], line["batch_id"], line["worker_id"], line["jobs"]) == (
        "job_1",
        "b_1",
        "w_1",
        ["job_1"],
    )
    assert line["ts"].endswith("Z")


def test_level_comes_from_settings(capture):
    buffer = capture(log_level="WARNING")
    log = logs.get_logger("t")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in lines(buffer)] == ["shown"]


def test_a_traceback_stays_on_one_line(capture):
    buffer = capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get_logger("t").exception("job.failed", extra={"job_id": "job_2"})
    [line] = lines(buffer)
    assert "ValueError: boom" in line["exc"] and line["job_id"] == "job_2"


def test_prompts_are_redacted_unless_configured(capture):
    secret = "a very private prompt"
    buffer = capture()
    logs.get_logger("t").info("job.submitted", extra={"prompt": secret, "negative_prompt": secret})
    assert secret not in buffer.getvalue()
    [line] = lines(buffer)
    assert line["prompt"]["chars"] == len(secret) and len(line["prompt"]["sha256"]) == 12

    buffer = capture(log_prompts=True)
    logs.get_logger("t").info(
        "job.submitted", extra={"prompt": logs.prompt_field(Settings(log_prompts=True), secret)}
    )
    assert lines(buffer)[0]["prompt"] == secret


def test_prompt_field_helper():
    assert logs.prompt_field(Settings(log_prompts=True), "cat") == "cat"
    redacted = logs.prompt_field(Settings(), "cat")
    assert redacted == logs.prompt_field(Settings(), "cat") != logs.prompt_field(Settings(), "dog")
    assert "cat" not in json.dumps(redacted)


def test_library_loggers_go_through_the_json_handler(capture):
    buffer = capture()
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 42, extra={"color_message": "\x1b[1m..."}
    )
    logging.getLogger("rq.worker").info("Worker started")
    events = lines(buffer)
    assert [line["event"] for line in events] == ["Started server process [42]", "Worker started"]
    assert "color_message" not in events[0]
