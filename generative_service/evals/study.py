"""A study's stored record and its design: the images to make, the pairs, and what each rater sees.

Blinding and randomisation are pure functions of the study's secret and the rater's name, so
every gateway process shows a rater the same order and sides, and nothing per rater is stored
before they vote:
  - order: the pairs (real and attention checks) shuffled by a generator seeded with
    HMAC(secret, rater);
  - sides: pair p shows its first arm on the left when HMAC(secret, rater | p) is even.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from generative_service.evals.schemas import Arm

ItemState = Literal["pending", "queued", "succeeded", "failed"]


class Item(BaseModel):
    """One image of the study: an arm's rendering of one prompt with one seed."""

    arm: int
    prompt: int
    seed: int
    job_id: str | None = None
    state: ItemState = "pending"
    error: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state in ("succeeded", "failed")


class Pair(BaseModel):
    """Two items of the same prompt and seed; an attention check has the same arm twice."""

    id: str
    prompt: int
    seed: int
    arms: tuple[int, int]

    @property
    def is_check(self) -> bool:
        return self.arms[0] == self.arms[1]


class StudyRecord(BaseModel):
    id: str
    owner: str
    name: str
    created_at: datetime
    secret: str
    arms: list[Arm]
    base: dict[str, Any]
    prompts: list[str]
    seeds: list[int]
    attention_fail_limit: float
    items: list[Item]
    pairs: list[Pair]

    def item(self, arm: int, prompt: int, seed: int) -> Item:
        return self.items[(arm * len(self.prompts) + prompt) * len(self.seeds) + seed]

    def pair(self, pair_id: str) -> Pair | None:
        return next((pair for pair in self.pairs if pair.id == pair_id), None)

    def pair_items(self, pair: Pair) -> tuple[Item, Item]:
        return (
            self.item(pair.arms[0], pair.prompt, pair.seed),
            self.item(pair.arms[1], pair.prompt, pair.seed),
        )

    def pair_state(self, pair: Pair) -> ItemState:
        """succeeded when both images exist, failed when either failed, else still generating."""
        states = {item.state for item in self.pair_items(pair)}
        if "failed" in states:
            return "failed"
        return "succeeded" if states == {"succeeded"} else "queued"

    @property
    def generating(self) -> bool:
        return not all(item.is_terminal for item in self.items)


def new_study_id() -> str:
    return f"eval_{secrets.token_hex(10)}"


def design(
    *, arms: int, prompts: int, seeds: int, attention_share: float, rng: random.Random
) -> tuple[list[Item], list[Pair]]:
    """Every image (arm x prompt x seed) and every pair: each two arms for each prompt and seed,
    plus ceil(share x real pairs) attention checks on random (prompt, seed, arm)."""
    items = [
        Item(arm=a, prompt=p, seed=s)
        for a in range(arms)
        for p in range(prompts)
        for s in range(seeds)
    ]
    pairs = [
        Pair(id=f"p{p}.{s}.{a}.{b}", prompt=p, seed=s, arms=(a, b))
        for p in range(prompts)
        for s in range(seeds)
        for a in range(arms)
        for b in range(a + 1, arms)
    ]
    candidates = [(p, s, a) for p in range(prompts) for s in range(seeds) for a in range(arms)]
    count = min(len(candidates), math.ceil(attention_share * len(pairs)))
    for p, s, a in rng.sample(candidates, count):
        pairs.append(Pair(id=f"c{p}.{s}.{a}", prompt=p, seed=s, arms=(a, a)))
    return items, pairs


def _digest(secret: str, message: str) -> bytes:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()


def rater_order(study: StudyRecord, rater: str) -> list[Pair]:
    """The order in which `rater` sees the pairs (stable for the rater, different across raters)."""
    order = list(study.pairs)
    random.Random(_digest(study.secret, rater)).shuffle(order)
    return order


def sides(study: StudyRecord, rater: str, pair: Pair) -> tuple[int, int]:
    """(left arm, right arm) of `pair` for `rater`."""
    first, second = pair.arms
    if _digest(study.secret, f"{rater}\n{pair.id}")[0] % 2:
        return second, first
    return first, second
