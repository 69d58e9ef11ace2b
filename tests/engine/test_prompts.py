"""Prompt-embedding cache: shared through Redis, exact, and the empty negative prompt is zeros."""

from __future__ import annotations

import secrets

import pytest
import torch

from generative_service.engine.prompts import PromptEncoder

from .engine_helpers import max_diff, req, run_one


@pytest.fixture
def prefix(redis):
    value = f"t_engine_emb_{secrets.token_hex(4)}"
    yield value
    keys = list(redis.scan_iter(match=f"{value}:*"))
    if keys:
        redis.delete(*keys)


def test_cache_is_shared_through_redis_and_exact(engine, redis, prefix):
    fingerprint = engine.prompts.fingerprint
    first = PromptEncoder(engine.pipe, fingerprint=fingerprint, redis=redis, key_prefix=prefix)
    fresh = first.encode("a photo of a dog")
    assert first.stats.misses == 1
    assert len(list(redis.scan_iter(match=f"{prefix}:emb:*"))) == 1
    other_worker = PromptEncoder(
        engine.pipe, fingerprint=fingerprint, redis=redis, key_prefix=prefix
    )
    cached = other_worker.encode("a photo of a dog")
    assert other_worker.stats.hits_redis == 1 and other_worker.stats.misses == 0
    assert torch.equal(cached.embeds, fresh.embeds) and torch.equal(cached.pooled, fresh.pooled)
    other_worker.encode("a photo of a dog")
    assert other_worker.stats.hits_local == 1


def test_other_model_does_not_share_entries(engine, redis, prefix):
    PromptEncoder(engine.pipe, fingerprint="model-a", redis=redis, key_prefix=prefix).encode(
        "a cat"
    )
    b = PromptEncoder(engine.pipe, fingerprint="model-b", redis=redis, key_prefix=prefix)
    b.encode("a cat")
    assert b.stats.misses == 1


def test_works_without_redis_and_with_redis_down(engine):
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    encoder = PromptEncoder(engine.pipe, fingerprint="x", redis=dead, key_prefix="t_engine_dead")
    assert encoder.encode("a cat").embeds.shape == (1, 77, 64)
    assert PromptEncoder(engine.pipe, fingerprint="x", redis=None).encode("a cat").pooled.shape == (
        1,
        32,
    )


def test_empty_negative_prompt_is_zeros_and_differs_from_encoded_text(engine):
    empty = engine.prompts.encode("")
    assert not empty.embeds.any() and not empty.pooled.any()
    space = engine.prompts.encode(" ")
    assert space.embeds.any()
    assert (
        max_diff(
            run_one(engine, req(negative_prompt="")).images[0],
            run_one(engine, req(negative_prompt=" ")).images[0],
        )
        > 0
    )


def test_images_identical_with_cached_embeddings(engine, redis, prefix):
    from generative_service.engine import Engine

    cached_engine = Engine.__new__(Engine)  # same models, Redis-backed cache
    cached_engine.__dict__.update(engine.__dict__)
    cached_engine.prompts = PromptEncoder(
        engine.pipe, fingerprint=engine.prompts.fingerprint, redis=redis, key_prefix=prefix
    )
    first = run_one(cached_engine, req(prompt="a blue house", negative_prompt="ugly")).images[0]
    cached_engine.prompts.clear_local()
    second = run_one(cached_engine, req(prompt="a blue house", negative_prompt="ugly")).images[0]
    assert cached_engine.prompts.stats.hits_redis == 2
    assert max_diff(first, second) == 0
    assert (
        max_diff(
            first, run_one(engine, req(prompt="a blue house", negative_prompt="ugly")).images[0]
        )
        == 0
    )
