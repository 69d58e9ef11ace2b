"""Prompt embeddings with a two-level cache: a small in-process LRU, then Redis (shared by workers).

Long prompts are split as AUTOMATIC1111 splits them: 75-token chunks, each encoded as its own
77-token window (start and end tokens around it) by both text encoders, the windows' states
concatenated along the sequence; the pooled embedding is the first chunk's. A prompt and its
negative are padded to the same number of chunks with empty chunks (zeros for the zeroed empty
negative), and only jobs with the same chunk count share a pipeline call, so batch == solo holds.

Each text is encoded on its own (batch of one), so its embedding is the same whatever else is in
the batch, and a cached embedding is bit-identical to a fresh one. The empty negative prompt of a
`force_zeros_for_empty_prompt` model (SDXL's default) is all zeros, as diffusers does when no
negative prompt is given, and costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from generative_service.keys import Keys

log = logging.getLogger(__name__)
_LOCAL_ENTRIES = 256
_REDIS_RETRY_S = 30.0
CHUNK_TOKENS = 75  # a CLIP window of 77 minus its start and end tokens


@dataclass(frozen=True)
class Embedding:
    """One text's SDXL conditioning: sequence (1, 77, D) and pooled (1, P) embeddings."""

    embeds: torch.Tensor
    pooled: torch.Tensor


@dataclass
class CacheStats:
    hits_local: int = 0
    hits_redis: int = 0
    misses: int = 0


class PromptEncoder:
    """Encodes prompts through the pipeline's two text encoders, caching results.

    Args:
        pipe: the SDXL pipeline (its `encode_prompt`, text encoders and config are used).
        fingerprint: identifies the text encoders + tokenizers (a hash of their files); part of every key.
        redis: a redis-py client or None (then only the in-process cache is used).
        key_prefix: the settings' key prefix.
        ttl_s: lifetime of Redis entries; 0 disables the Redis level.
    """

    def __init__(
        self, pipe, *, fingerprint: str, redis=None, key_prefix: str = "gensvc", ttl_s: int = 86400
    ) -> None:
        self.pipe = pipe
        self.fingerprint = fingerprint
        self.redis = _binary_client(redis) if redis is not None and ttl_s > 0 else None
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self._local: OrderedDict[str, Embedding] = OrderedDict()
        self._redis_down_until = 0.0

    def chunk_count(self, *texts: str) -> int:
        """How many 75-token chunks the longest of `texts` needs (1 for any ordinary prompt)."""
        counts = [1]
        for text in texts:
            for tokenizer in (self.pipe.tokenizer, self.pipe.tokenizer_2):
                if tokenizer is not None and text:
                    tokens = len(_tokens(tokenizer, text))
                    counts.append(-(-tokens // CHUNK_TOKENS))
        return max(counts)

    def encode(self, text: str, *, signature: str = "", chunks: int = 1) -> Embedding:
        """The embedding of `text`, at least `chunks` windows long.

        `signature` names active text-encoder LoRAs (they change it).
        """
        chunks = max(chunks, self.chunk_count(text))
        key = self._key(text, signature if chunks == 1 else f"{signature}\0chunks={chunks}")
        cached = self._local.get(key)
        if cached is not None:
            self._local.move_to_end(key)
            self.stats.hits_local += 1
            return cached
        embedding = self._from_redis(key)
        if embedding is None:
            self.stats.misses += 1
            embedding = self._compute(text) if chunks == 1 else self._compute_chunked(text, chunks)
            self._to_redis(key, embedding)
        else:
            self.stats.hits_redis += 1
        self._remember(key, embedding)
        return embedding

    def clear_local(self) -> None:
        """Forget the in-process level (benchmarks use it to measure the Redis level)."""
        self._local.clear()

    # --- internals ---------------------------------------------------------------------------

    def _key(self, text: str, signature: str) -> str:
        digest = hashlib.sha256("\0".join((self.fingerprint, signature, text)).encode()).hexdigest()
        return Keys(self.key_prefix).embedding(digest)

    @torch.inference_mode()
    def _compute(self, text: str) -> Embedding:
        pipe = self.pipe
        if text == "" and pipe.config.get("force_zeros_for_empty_prompt", False):
            return self._zeros()
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=text,
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return Embedding(embeds=embeds.detach().clone(), pooled=pooled.detach().clone())

    @torch.inference_mode()
    def _compute_chunked(self, text: str, chunks: int) -> Embedding:
        pipe = self.pipe
        if text == "" and pipe.config.get("force_zeros_for_empty_prompt", False):
            return self._zeros(chunks)
        states, pooled = [], None
        for tokenizer, encoder in (
            (pipe.tokenizer, pipe.text_encoder),
            (pipe.tokenizer_2, pipe.text_encoder_2),
        ):
            ids = _windows(tokenizer, _tokens(tokenizer, text), chunks).to(encoder.device)
            output = encoder(ids, output_hidden_states=True)
            # (chunks, 77, D) -> (1, chunks * 77, D): the windows side by side
            states.append(
                output.hidden_states[-2].reshape(1, -1, output.hidden_states[-2].shape[-1])
            )
            if output[0].ndim == 2:  # the projection model's pooled output, first window
                pooled = output[0][:1]
        if pooled is None:  # SDXL's second encoder is a CLIPTextModelWithProjection
            raise RuntimeError("no text encoder of the model gave a pooled (projected) output")
        embeds = torch.cat(states, dim=-1).to(dtype=pipe.text_encoder_2.dtype)
        return Embedding(embeds=embeds.detach().clone(), pooled=pooled.detach().clone())

    def _zeros(self, chunks: int = 1) -> Embedding:
        pipe = self.pipe
        dim = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        length = pipe.tokenizer_2.model_max_length * chunks
        dtype, device = pipe.text_encoder_2.dtype, pipe.device
        embeds = torch.zeros((1, length, dim), dtype=dtype, device=device)
        pooled = torch.zeros(
            (1, pipe.text_encoder_2.config.projection_dim), dtype=dtype, device=device
        )
        return Embedding(embeds=embeds, pooled=pooled)

    def _remember(self, key: str, embedding: Embedding) -> None:
        self._local[key] = embedding
        while len(self._local) > _LOCAL_ENTRIES:
            self._local.popitem(last=False)

    def _from_redis(self, key: str) -> Embedding | None:
        if self.redis is None or time.monotonic() < self._redis_down_until:
            return None
        try:
            raw = self.redis.get(key)
        except Exception as exc:  # NOTE: a cache outage must never fail a generation
            self._disable(exc)
            return None
        if not raw:
            return None
        try:
            tensors = load_tensors(raw)
            device = self.pipe.device
            return Embedding(
                embeds=tensors["embeds"].to(device), pooled=tensors["pooled"].to(device)
            )
        except Exception:
            log.warning("embedding cache entry %s unreadable; recomputing", key)
            return None

    def _to_redis(self, key: str, embedding: Embedding) -> None:
        if self.redis is None or time.monotonic() < self._redis_down_until:
            return
        payload = save_tensors(
            {
                "embeds": embedding.embeds.cpu().contiguous(),
                "pooled": embedding.pooled.cpu().contiguous(),
            }
        )
        try:
            self.redis.set(key, payload, ex=self.ttl_s)
        except Exception as exc:
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        log.warning(
            "prompt-embedding cache in Redis unavailable (%s); local cache only for %ss",
            exc,
            _REDIS_RETRY_S,
        )
        self._redis_down_until = time.monotonic() + _REDIS_RETRY_S


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def _windows(tokenizer, tokens: list[int], chunks: int) -> torch.Tensor:
    """(chunks, 77) token ids: each 75-token chunk between start and end, padded; extra chunks empty."""
    width = CHUNK_TOKENS + 2
    rows = []
    for index in range(chunks):
        part = tokens[index * CHUNK_TOKENS : (index + 1) * CHUNK_TOKENS]
        row = [tokenizer.bos_token_id, *part, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.pad_token_id] * (width - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def _binary_client(redis):
    """The same Redis, but returning bytes (a client made with decode_responses=True cannot)."""
    kwargs = dict(redis.connection_pool.connection_kwargs)
    if not kwargs.get("decode_responses"):
        return redis
    import redis as redis_lib

    kwargs["decode_responses"] = False
    pool = redis_lib.ConnectionPool(
        connection_class=redis.connection_pool.connection_class, **kwargs
    )
    return redis_lib.Redis(connection_pool=pool)
