"""Wire models of the A/B evaluation API (/v1/evals): studies, pairs, votes and results."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Request fields a study sets itself (prompt, seed, one image per job) or that make no sense in
# a study (callbacks, the client's own metadata).
STUDY_OWNED_FIELDS = (
    "prompt",
    "seed",
    "num_images",
    "webhook",
    "webhook_events_filter",
    "metadata",
)
MAX_ARMS = 8
MAX_PROMPTS = 200
RATER_PATTERN = r"^[\w .@+-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmSpec(_Strict):
    name: str = Field(
        min_length=1, max_length=64, description="Shown in results only, never to raters."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Generation parameters of this arm (any POST /v1/jobs field except "
        + ", ".join(STUDY_OWNED_FIELDS)
        + "), over the study's `base`.",
    )


class StudyCreate(_Strict):
    """POST /v1/evals body."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "20 vs 4 steps",
                    "arms": [
                        {"name": "20 steps", "params": {"steps": 20}},
                        {"name": "4 steps", "params": {"steps": 4}},
                    ],
                    "prompts": ["a red circle above a blue square", "a green triangle"],
                    "seeds_per_prompt": 2,
                    "base": {"guidance_scale": 3.0},
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    arms: list[ArmSpec] = Field(min_length=2, max_length=MAX_ARMS)
    base: dict[str, Any] = Field(
        default_factory=dict, description="Generation parameters shared by every arm."
    )
    prompts: list[str] | None = Field(
        None,
        max_length=MAX_PROMPTS,
        description="Default: the prompt set of `benchmarks/prompts.txt` (GENSVC_EVAL_PROMPTS_FILE).",
    )
    max_prompts: int | None = Field(
        None, ge=1, le=MAX_PROMPTS, description="Use only the first N prompts."
    )
    seeds_per_prompt: int = Field(1, ge=1, le=16)
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Explicit seeds (default: `seeds_per_prompt` random ones). Every arm uses the same seeds.",
    )
    attention_share: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Attention checks (the same image twice) as a share of the real pairs; at least one when > 0.",
    )
    attention_fail_limit: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="A rater who answers more than this share of attention checks with A or B is flagged.",
    )

    @field_validator("arms")
    @classmethod
    def _unique_names(cls, value: list[ArmSpec]) -> list[ArmSpec]:
        names = [arm.name for arm in value]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must not be empty (leave it out for the default prompt set)")
            for index, prompt in enumerate(value):
                if not prompt.strip():
                    raise ValueError(f"prompt {index} is blank")
        return value


class StudyStatus(enum.StrEnum):
    generating = "generating"
    ready = "ready"


class ImageCounts(BaseModel):
    total: int
    succeeded: int
    failed: int
    waiting: int = Field(
        description="Submitted and not finished, or not yet admitted to the queue."
    )


class Arm(BaseModel):
    name: str
    params: dict[str, Any]


class StudyResource(BaseModel):
    id: str
    name: str
    status: StudyStatus
    created_at: datetime
    arms: list[Arm]
    prompts: list[str]
    seeds: list[int]
    images: ImageCounts
    pairs: int = Field(
        description="Real pairs (two arms, same prompt and seed) whose images exist."
    )
    attention_checks: int
    votes: int
    errors: list[str] = Field(default_factory=list, description="Why images failed, if any did.")
    links: dict[str, str]


class StudyList(BaseModel):
    data: list[StudyResource]


class PairSide(BaseModel):
    image_url: str


class NextPair(BaseModel):
    """What a rater sees: a prompt and two images, blind and in random order."""

    done: bool = Field(description="True when this rater has answered every pair.")
    status: StudyStatus
    pair_id: str | None = None
    prompt: str | None = None
    left: PairSide | None = None
    right: PairSide | None = None
    answered: int
    remaining: int = Field(
        description="Pairs left for this rater (including ones still generating)."
    )


class VoteCreate(_Strict):
    rater: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=RATER_PATTERN,
        description="The rater's name; default: the caller's key id.",
    )
    pair_id: str = Field(min_length=1, max_length=64)
    choice: Literal["left", "right", "tie", "skip"]
    reason: str = Field("", max_length=1000)


class VoteResource(BaseModel):
    """A recorded vote as the rater sees it (no arm names)."""

    pair_id: str
    rater: str
    choice: str
    reason: str
    at: datetime
