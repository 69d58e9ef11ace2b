"""The job record: what Redis stores per job (`P:job:{id}`, see keys.py).

Its own module so that the queue (queue.py), the store (jobs.py), the gateway and the workers can
all read and write records without importing each other.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from generative_service.schemas import (
    BatchInfo,
    GenerationRequest,
    ImageInfo,
    JobError,
    JobStatus,
    Progress,
    Timings,
)

ANONYMOUS = "anonymous"  # the owner of jobs submitted without an API key


class JobRecord(BaseModel):
    """What is stored per job: the resource without derived fields, plus internal bookkeeping."""

    id: str
    owner: str = ANONYMOUS
    status: JobStatus = JobStatus.queued
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue: str = "default"
    attempts: int = 0
    # NOTE: factories, not instances: pydantic deep-copies a model default on every record made.
    progress: Progress = Field(default_factory=Progress)
    request: GenerationRequest
    images: list[ImageInfo] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    batch: BatchInfo | None = None
    error: JobError | None = None
    reproducibility: dict | None = None
    worker_id: str | None = None
