"""Settings: environment parsing, validation at start, and job routing rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from generative_service.settings import Settings


def test_lists_come_from_comma_separated_environment_values(monkeypatch):
    monkeypatch.setenv("GENSVC_API_KEYS", "alpha, beta")
    monkeypatch.setenv("GENSVC_QUEUES", "small,default")
    settings = Settings()
    assert settings.api_keys == ["alpha", "beta"]
    assert settings.queues == ["small", "default"]


def test_routes_by_size_and_by_lora_set_first_match_wins():
    settings = Settings(queue_routes="styles:lora=ink|pastel,small:4096,large:1048576")
    assert settings.queue_for(pixels=64 * 64) == "small"
    assert settings.queue_for(pixels=64 * 64, loras=["pastel"]) == "styles"
    assert settings.queue_for(pixels=512 * 512, loras=["other"]) == "large"
    assert settings.queue_for(pixels=2048 * 2048) == "default"
    assert settings.routed_queues == ["default", "styles", "small", "large"]


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("queue_routes", "small", "QUEUE:MAX_PIXELS"),
        ("queue_routes", "styles:lora=", "QUEUE:lora=NAME|NAME"),
        ("webhook_secrets", "not-a-secret", "whsec_"),
        ("webhook_retry_schedule", "5,soon", "non-negative seconds"),
    ],
)
def test_bad_values_fail_at_start_with_the_reason(env, value, named):
    with pytest.raises(ValidationError) as info:
        Settings(**{env: value})
    assert env in str(info.value)
    assert named in str(info.value)


def test_a_job_using_a_routed_lora_waits_in_that_lora_sets_queue(make_settings, redis):
    from generative_service.jobs import JobStore
    from generative_service.schemas import GenerationRequest

    settings = make_settings(queue_routes=["styles:lora=ink", "small:4096"])
    store = JobStore(redis, settings)
    styled, _ = store.create(GenerationRequest(prompt="7", loras=[{"name": "ink"}]))
    plain, _ = store.create(GenerationRequest(prompt="7", width=64, height=64))
    assert (styled.queue, plain.queue) == ("styles", "small")
    assert store.queue.rq_queue("styles").job_ids == [styled.id]
    assert store.to_resource(styled).queue_position == 1
