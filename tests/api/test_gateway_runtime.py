"""How the gateway process runs its requests: Redis commands packed in C, the garbage collector
kept off the objects built at start, and uvicorn on uvloop + httptools (not a silent fallback)."""

from __future__ import annotations

import gc
import json
import sys

import pytest
from fastapi.testclient import TestClient
from redis.asyncio.connection import Connection

from generative_service.api import create_app
from generative_service.api.app import GC_YOUNG_THRESHOLD, _PacksWithHiredis
from generative_service.cli import server_stack
from generative_service.jobs import JobStore
from generative_service.schemas import GenerationRequest

BODY = {"prompt": "a red circle above a blue square", "steps": 3, "metadata": {"note": "é✓"}}


def test_async_pool_packs_commands_in_c_with_redis_pys_bytes(make_settings, redis):
    settings = make_settings()
    app = create_app(settings)
    with TestClient(app) as client:
        pool = app.state.async_redis.connection_pool
        assert issubclass(pool.connection_class, _PacksWithHiredis)
        # What a submit sends: the submit script's keys and arguments (str, int, float, bytes).
        submission = JobStore(redis, settings).prepare(GenerationRequest(**BODY))
        command = ("EVALSHA", "0" * 40, len(submission.keys), *submission.keys, *submission.args)
        ours = b"".join(pool.make_connection().pack_command(*command))
        assert ours == b"".join(Connection().pack_command(*command))
        # ...and the gateway still reads and writes through it.
        answer = client.post("/v1/jobs", json=BODY)
        assert answer.status_code == 202, answer.text
        read = client.get(f"/v1/jobs/{answer.json()['id']}")
        assert read.json()["request"]["metadata"] == {"note": "é✓"}


def test_start_objects_are_frozen_while_serving_and_released_after(make_settings):
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with TestClient(create_app(make_settings())):
        # The collector no longer walks what the start built, and runs less often.
        assert gc.get_freeze_count() > frozen_before + 10_000
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
        with TestClient(create_app(make_settings())):
            pass  # a second app stopping does not undo the first one's
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
        assert gc.get_freeze_count() > frozen_before + 10_000
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0  # tests start many apps: nothing stays uncollectable


def test_server_stack_names_a_pure_python_fallback(monkeypatch):
    assert server_stack() == {"loop": "uvloop", "http": "httptools", "redis_parser": "hiredis"}
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    monkeypatch.setitem(sys.modules, "httptools", None)
    assert server_stack()["loop"] == "asyncio" and server_stack()["http"] == "h11"


@pytest.fixture
def gateway(start_service, settings):
    return start_service(settings, workers=0)


def test_gensvc_api_serves_on_uvloop_and_httptools(gateway):
    with gateway.client() as client:
        assert client.submit(BODY).status.value == "queued"
    lines = [
        json.loads(line) for line in gateway.logs("gateway").splitlines() if line.startswith("{")
    ]
    server = next(line for line in lines if line["event"] == "gateway.server")
    assert (server["loop"], server["http"], server["redis_parser"]) == (
        "uvloop",
        "httptools",
        "hiredis",
    )
    assert not [line for line in lines if line["event"] == "gateway.pure_python_fallback"]
    # Loaded in the serving process, not only found on disk.
    maps = open(f"/proc/{gateway.processes['gateway'].pid}/maps").read()
    assert "uvloop/loop." in maps and "httptools/parser/parser." in maps and "hiredis" in maps
