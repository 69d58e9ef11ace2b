"""Helpers for gateway tests: drive jobs through JobStore transitions, as a worker would, with no
worker and no torch; check the common error shape."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator

from PIL import Image
from redis import Redis
from support import check_error  # noqa: F401 - the api tests import it from here

from generative_service.jobs import JobStore
from generative_service.schemas import BatchInfo, ImageInfo, NsfwVerdict, Stage, Timings
from generative_service.settings import Settings
from generative_service.storage import encode_image, get_storage, image_url


class FakeWorker:
    """Moves jobs through the same JobStore transitions a GPU worker makes."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.store = JobStore(redis, settings)
        self.storage = get_storage(settings)

    def start(self, job_id: str) -> None:
        self.store.queue.rq_queue(self.store.get(job_id).queue).remove(job_id)
        self.store.mark_started(
            job_id, batch=BatchInfo(id="batch_test", size=1), worker_id="fake-worker"
        )

    def progress(self, job_id: str, steps: int) -> None:
        for step in range(1, steps + 1):
            self.store.report_progress(job_id, step, steps)

    def succeed(self, job_id: str, *, blocked: tuple[int, ...] = ()) -> None:
        """Store a small image per requested image (blocked ones stay unstored) and succeed."""
        record = self.store.get(job_id)
        request = record.request
        self.store.set_stage(job_id, Stage.storing)
        images = []
        for index in range(request.num_images):
            data, content_type = encode_image(
                Image.new("RGB", (request.width, request.height), (index * 60, 20, 200)),
                request.output_format,
            )
            if index not in blocked:
                self.storage.put(job_id, index, data, content_type)
            images.append(
                ImageInfo(
                    index=index,
                    url=None if index in blocked else image_url(job_id, index),
                    width=request.width,
                    height=request.height,
                    seed=request.seed + index,
                    nsfw=NsfwVerdict(
                        flagged=index in blocked, score=0.9 if index in blocked else 0.01
                    ),
                    blocked=index in blocked,
                    content_type=content_type,
                )  # fmt: skip
            )
        self.store.mark_succeeded(job_id, images=images, timings=Timings(inference_ms=1.0))

    def run(self, job_id: str, steps: int = 3, **kwargs) -> None:
        self.start(job_id)
        self.progress(job_id, steps)
        self.succeed(job_id, **kwargs)

    @contextlib.contextmanager
    def on_first_job(self, act: Callable[[str], None]) -> Iterator[None]:
        """Run `act(job_id)` on a thread once the first (anonymous) job exists, e.g. while a
        `Prefer: wait` request is still waiting for it; joined when the block ends."""

        def wait_then_act() -> None:
            for _ in range(200):
                jobs = self.store.list(owner="anonymous")[0]
                if jobs:
                    act(jobs[0].id)
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=wait_then_act)
        thread.start()
        try:
            yield
        finally:
            thread.join()


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size
