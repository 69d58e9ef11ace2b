"""A submit that fails holds no queue place (admission and the writes are one Redis script, so a
failure before or inside it takes nothing), and the inputs that used to fail after admission
are 422s."""

from __future__ import annotations

import pytest
from redis import Redis

from generative_service.jobs import JobStore
from generative_service.schemas import GenerationRequest

from .helpers import check_error

JSON = {"Content-Type": "application/json"}
NESTED_600 = '{"prompt": "a", "metadata": ' + '{"a": ' * 600 + "1" + "}" * 601


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            r'{"prompt": "a", "metadata": {"note": "\udfff"}}',
            "metadata: strings must be valid Unicode",
        ),
        (r'{"prompt": "a", "metadata": {"\ud800": 1}}', "metadata: strings must be valid Unicode"),
        (NESTED_600, "metadata: must be nested at most 32 levels deep"),
        (
            '{"prompt": "a", "metadata": {"a": ' + "[" * 400 + "]" * 400 + "}}",
            "metadata: must be nested",
        ),
    ],
    ids=["lone-surrogate-value", "lone-surrogate-key", "nested-600", "nested-lists-400"],
)
def test_bad_metadata_is_422_and_holds_no_queue_place(
    make_settings, make_api_client, redis: Redis, body, message
) -> None:
    settings = make_settings(max_queued=1)
    client = make_api_client(settings)
    for _ in range(3):  # a leaked place would make the third (or the real job) a 429
        check_error(
            client.post("/v1/jobs", content=body, headers=JSON), 422, "invalid_request", message
        )
    assert JobStore(redis, settings).queue.waiting_count() == 0
    assert client.post("/v1/jobs", json={"prompt": "a", "steps": 2}).status_code == 202


def test_any_failure_in_the_submit_path_holds_no_place(
    make_settings, redis: Redis, monkeypatch
) -> None:
    settings = make_settings(max_queued=1)
    store = JobStore(redis, settings)

    def broken_rq_job(record) -> None:
        raise RuntimeError("RQ went away")

    monkeypatch.setattr(store.queue, "rq_job_fields", broken_rq_job)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            store.create(GenerationRequest(prompt="a", steps=2))
    assert store.queue.waiting_count() == 0
    monkeypatch.undo()
    record, created = store.create(GenerationRequest(prompt="a", steps=2))
    assert created and record.status == "queued"  # the bound of 1 still has room
