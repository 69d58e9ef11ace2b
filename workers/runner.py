"""Run one batch: start its jobs, denoise them in one pipeline call, finish each job on its own.

Per job the record and RQ move together: RQ start + `mark_started`; progress and cancel during
denoising; then exactly one of succeeded (images stored), failed (code + message), canceled (the
client asked; batch-mates go on) or handed back (the worker is stopping: the job returns to the
front of its queue). `BatchState` is what the liveness and watchdog threads see of the batch.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from redis.exceptions import RedisError

from generative_service import metrics
from generative_service.engine.compatibility import images_in
from generative_service.engine.interrupt import Interrupted
from generative_service.errors import ServiceError
from generative_service.logs import get_logger
from generative_service.schemas import BatchInfo, utcnow
from workers import lifecycle
from workers.outputs import postprocess_and_store
from workers.progress import PendingSteps, ProgressPublisher, preview_data_url
from workers.step_hooks import CancelPoller, Outcome, StepTimer

if TYPE_CHECKING:
    from PIL.Image import Image
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue
    from rq.worker import BaseWorker

    from generative_service.engine.engine import JobOutput, StepInfo
    from generative_service.jobs import JobStore
    from generative_service.postprocess.safety import SafetyVerdict
    from generative_service.record import JobRecord
    from generative_service.schemas import GenerationRequest
    from generative_service.settings import Settings
    from generative_service.storage import Storage
    from workers.batch_filler import Batch
    from workers.boundary import Models, SafetyCheck

    # What the engine gave for one job: its output, or the exception that stopped it.
    EngineResult = JobOutput | BaseException

log = get_logger(__name__)


@dataclass
class Slot:
    """One job of the running batch."""

    rq_job: Job
    record: JobRecord
    execution: Execution
    queue: Queue | None = None  # the RQ queue the job was taken from (its key's)
    outcome: Outcome | None = None

    @property
    def id(self) -> str:
        return self.record.id


@dataclass
class BatchState:
    """The running batch as other threads see it (heartbeats, watchdog, liveness key)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    batch_id: str | None = None
    started: float | None = None
    queue: Queue | None = None
    slots: list[Slot] = field(default_factory=list)

    def begin(self, batch_id: str, queue: Queue) -> None:
        with self.lock:
            self.batch_id, self.started, self.queue, self.slots = (
                batch_id,
                time.monotonic(),
                queue,
                [],
            )

    def add(self, slot: Slot) -> None:
        with self.lock:
            self.slots.append(slot)

    def end(self) -> None:
        with self.lock:
            self.batch_id, self.started, self.queue, self.slots = None, None, None, []

    def snapshot(self) -> tuple[str | None, float | None, list[Slot]]:
        with self.lock:
            return self.batch_id, self.started, list(self.slots)


class BatchVerdicts:
    """The NSFW filter's verdicts for a whole batch, computed in one call (see _batch_safety);
    answers `check` for images of the batch from them and passes the rest to the filter."""

    def __init__(
        self,
        safety: SafetyCheck,
        verdicts: dict[int, SafetyVerdict] | None = None,
        shared_ms: float = 0.0,
    ) -> None:
        self.safety = safety
        self.verdicts = verdicts or {}
        self.shared_ms = shared_ms  # the batch's one filter call, counted in each job's safety_ms

    def check(self, images: Sequence[Image]) -> list[SafetyVerdict]:
        if all(id(image) in self.verdicts for image in images):
            return [self.verdicts[id(image)] for image in images]
        return self.safety.check(images)

    def apply(self, image: Image, verdict: SafetyVerdict) -> tuple[Image | None, bool]:
        return self.safety.apply(image, verdict)


def error_code(exc: BaseException) -> tuple[str, str]:
    """The job error (code, message) for an exception raised while running it."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    if "OutOfMemory" in type(exc).__name__:
        return "out_of_memory", f"the device ran out of memory running this batch: {exc}"
    return "generation_failed", f"{type(exc).__name__}: {exc}"


class BatchRunner:
    """Runs batches for one worker process (engine and post-processing already loaded)."""

    def __init__(
        self,
        worker: BaseWorker,
        *,
        store: JobStore,
        storage: Storage,
        models: Models,
        settings: Settings,
        worker_id: str,
        state: BatchState,
        abort: threading.Event,
        publisher: ProgressPublisher,
    ) -> None:
        self.worker = worker
        self.store = store
        self.storage = storage
        self.models = models
        self.settings = settings
        self.worker_id = worker_id
        self.state = state
        self.abort = abort
        self.publisher = publisher
        self.running_key = settings.keys.running
        self._after_batch: list[Callable[[], None]] = []  # bookkeeping that waits for delivery

    # --- one batch ------------------------------------------------------------------------------
    def run(self, batch: Batch) -> tuple[datetime, datetime, int] | None:
        """Run `batch` to the end: every job leaves it succeeded, failed, canceled or handed back.

        Returns when the first and the last result went out and to how many jobs (None when no
        job of the batch started).
        """
        batch_id = "batch_" + secrets.token_hex(8)
        self.state.begin(batch_id, batch.queue)
        try:
            info = BatchInfo(id=batch_id, size=batch.images, jobs=len(batch.jobs))
            slots = [
                slot
                for slot in (
                    self._start(job, record, batch.queue_of(job), info)
                    for job, record in batch.jobs
                )
                if slot
            ]
            if slots:
                log.info(
                    "batch.started",
                    extra={
                        "batch_id": batch_id,
                        "worker_id": self.worker_id,
                        "jobs": [s.id for s in slots],
                        "images": info.size,
                    },
                )
                results = self._generate(slots)
                self.publisher.flush()
                safety = self._batch_safety(slots, results)
                delivering = utcnow()
                # Handed-back jobs go to the front of the queue one by one: last first keeps their order.
                for slot in reversed(slots) if self.abort.is_set() else slots:
                    self._finish(slot, results.get(slot.id), slot.queue or batch.queue, safety)
                return delivering, utcnow(), len(slots)
            return None
        finally:
            try:
                run_bookkeeping(self._after_batch)
            finally:
                self.state.end()

    def fail_alone(self, job: Job, queue: Queue, record: JobRecord, error: ServiceError) -> None:
        """A job this worker cannot run (bad request): failed at once, in RQ too, never batched."""
        execution = lifecycle.start(self.worker, job)
        self._mark(self.store.mark_failed, record.id, code=error.code, message=error.message)
        lifecycle.fail(self.worker, job, queue, execution, error)

    def _start(self, job: Job, record: JobRecord, queue: Queue, info: BatchInfo) -> Slot | None:
        slot = Slot(
            rq_job=job, record=record, execution=lifecycle.start(self.worker, job), queue=queue
        )
        self.state.add(slot)
        owner = _json({"worker": self.worker_id, "incarnation": self.worker.name})
        started = self.store.mark_started(
            record.id,
            batch=info,
            worker_id=self.worker_id,
            # The running entry in the same transaction: no moment where the job runs unclaimed.
            also=lambda pipe, _record: pipe.hset(self.running_key, record.id, owner),
        )
        if started is None:  # canceled while it was being claimed
            lifecycle.cancel(self.worker, job, queue, slot.execution)
            slot.outcome = Outcome.canceled
            return None
        slot.record = started
        return slot

    # --- denoising ------------------------------------------------------------------------------
    def _generate(self, slots: list[Slot]) -> dict[str, EngineResult]:
        """JobOutput (or the exception) per job id. A failed multi-job batch is retried job by job,
        so one job that breaks the pipeline call does not take its batch-mates down with it."""
        try:
            return {output.job_id: output for output in self._run_engine(slots)}
        except Exception as exc:  # noqa: BLE001 - becomes the jobs' failure reason
            if len(slots) == 1 or self.abort.is_set():
                return {slot.id: exc for slot in slots}
            log.warning(
                "batch.failed_retrying_alone",
                extra={"error": repr(exc), "jobs": [s.id for s in slots]},
            )
        results: dict[str, EngineResult] = {}
        for slot in slots:
            try:
                results.update({output.job_id: output for output in self._run_engine([slot])})
            except Exception as exc:  # noqa: BLE001
                results[slot.id] = exc
        return results

    def _run_engine(self, slots: list[Slot]) -> list[JobOutput]:
        from generative_service.engine import EngineJob

        by_id = {slot.id: slot for slot in slots}
        first = slots[0].id
        timer = StepTimer()

        size = slots[0].record.request.resolved_size  # a batch shares one size
        steps: PendingSteps[StepReport] = PendingSteps(
            self.publisher, lambda reports, times: self._write_steps(reports, size, times)
        )

        def on_step(info: StepInfo) -> None:
            request = by_id[info.job_id].record.request
            image = (
                info.preview
                if request.preview
                and _wants_preview(request.preview.every_n_steps, info.step, info.total_steps)
                else None
            )
            steps.add(
                StepReport(info.job_id, info.step, info.total_steps, image, request),
                timer.tick(info.step) if info.job_id == first else None,
                last=info.step >= info.total_steps,
            )

        def on_cancel(job_id: str) -> None:
            # NOTE: after the job's progress events so far; terminal at once.
            steps.submit()
            self.publisher.submit(partial(self.store.mark_canceled, job_id))

        cancel_poller = CancelPoller(
            self.store.redis,
            self.store.keys,
            [slot.id for slot in slots],
            aborted=self.abort.is_set,
            on_cancel=on_cancel,
        )

        jobs = [EngineJob(job_id=slot.id, request=slot.record.request) for slot in slots]
        try:
            with cancel_poller as is_canceled:
                outputs = self.models.engine.run(jobs, on_step=on_step, is_canceled=is_canceled)
        finally:
            steps.submit()  # the steps gathered since the last write (a failed or canceled run)
        # Written once the batch's jobs are delivered: not between a lone job's last step and its result.
        self._after_batch.append(
            partial(
                metrics.batch_ran,
                self.store.redis,
                self.settings,
                sum(images_in(s.record.request) for s in slots),
                timer.steps_s or None,
            )
        )
        return outputs

    def _write_steps(
        self, items: list[StepReport], size: tuple[int, int], step_times_ms: list[float]
    ) -> None:
        """Write step events, in order, at once; then fold the step times into the ETA average
        (those of a write with a job's last step once the batch's results are out: the worker
        waits for that write before the job moves on)."""
        if items:
            self.store.report_progress_many([
                (item.job_id, item.step, item.total, _preview_url(item))
                for item in items
            ])  # fmt: skip
        fold = partial(self.store.queue.record_step_times, *size, step_times_ms)
        if any(item.step >= item.total for item in items):
            self._after_batch.append(fold)
        else:
            fold()

    # --- finishing ------------------------------------------------------------------------------
    def _batch_safety(self, slots: list[Slot], results: dict[str, EngineResult]) -> BatchVerdicts:
        """The NSFW filter run once over every image of the batch (one model call, not one per
        job); what postprocess_and_store() gets as its filter. Falls back to per-job checks on any error."""
        images = [
            image
            for slot in slots
            if (result := results.get(slot.id)) is not None
            and not isinstance(result, BaseException)
            and not result.canceled
            for image in result.images
        ]
        if len(images) < 2 or self.abort.is_set():
            return BatchVerdicts(self.models.safety)
        start = time.perf_counter()
        try:
            verdicts = self.models.safety.check(images)
        except Exception:  # noqa: BLE001 - each job's own check reports the error
            log.exception("batch.safety_failed")
            return BatchVerdicts(self.models.safety)
        shared_ms = (time.perf_counter() - start) * 1000.0
        return BatchVerdicts(
            self.models.safety, dict(zip(map(id, images), verdicts, strict=True)), shared_ms
        )

    def _finish(
        self,
        slot: Slot,
        result: EngineResult | None,
        queue: Queue,
        safety: BatchVerdicts | None = None,
    ) -> None:
        try:
            slot.outcome = self._outcome(
                slot, result, queue, safety or BatchVerdicts(self.models.safety)
            )
        except Exception as exc:  # noqa: BLE001 - post-processing of one job failed
            log.exception("job.failed", extra={"job_id": slot.id, "worker_id": self.worker_id})
            code, message = error_code(exc)
            self._mark(self.store.mark_failed, slot.id, code=code, message=message)
            lifecycle.fail(self.worker, slot.rq_job, queue, slot.execution, exc)
            slot.outcome = Outcome.failed
        finally:
            self._forget(slot.id)
        log.info(
            f"job.{slot.outcome}",
            extra={"job_id": slot.id, "worker_id": self.worker_id, "batch_id": self.state.batch_id},
        )

    def _outcome(
        self, slot: Slot, result: EngineResult | None, queue: Queue, safety: BatchVerdicts
    ) -> Outcome:
        worker, job = self.worker, slot.rq_job
        if result is None:
            result = RuntimeError("the engine returned no output for this job")
        if isinstance(result, BaseException):
            code, message = error_code(result)
            self._mark(self.store.mark_failed, slot.id, code=code, message=message)
            lifecycle.fail(worker, job, queue, slot.execution, result)
            return Outcome.failed
        if (
            result.canceled
            and self.abort.is_set()
            and not self.store.is_cancel_requested(slot.id)
            and not self._ended(slot.id)
        ):
            self._mark(
                self.store.mark_requeued,
                slot.id,
                reason=f"worker {self.worker_id} stopped; the job went back to the queue",
            )
            lifecycle.hand_back(worker, job, queue, slot.execution)
            return Outcome.handed_back
        if result.canceled or self.store.ended_or_cancel_requested(slot.id):
            return self._canceled(slot, queue)
        try:
            stored = postprocess_and_store(
                job_id=slot.id, request=slot.record.request, images=result.images, seeds=result.seeds, inference_ms=result.inference_ms,
                store=self.store, storage=self.storage, safety=safety, safety_shared_ms=safety.shared_ms,
                upscaler=self.models.upscaler,
                is_canceled=partial(self.store.is_cancel_requested, slot.id), cancel_read=True,
            )  # fmt: skip
        except Interrupted:  # canceled during safety, upscaling or storing
            return self._canceled(slot, queue)
        metrics.nsfw_flagged(self.store.redis, self.settings, stored.flagged)
        done = self._mark(
            self.store.mark_succeeded,
            slot.id,
            images=stored.images,
            timings=stored.timings,
            reproducibility=result.reproducibility,
        )
        if done is None and self._ended(slot.id):  # canceled while post-processing
            lifecycle.cancel(worker, job, queue, slot.execution)
            return Outcome.canceled
        lifecycle.succeed(
            worker,
            job,
            queue,
            slot.execution,
            {"status": "succeeded", "images": len(stored.images)},
        )
        return Outcome.succeeded

    def _canceled(self, slot: Slot, queue: Queue) -> Outcome:
        self._mark(self.store.mark_canceled, slot.id)
        lifecycle.cancel(self.worker, slot.rq_job, queue, slot.execution)
        return Outcome.canceled

    def _ended(self, job_id: str) -> bool:
        return self.store.get(job_id).status.is_terminal

    def _mark(
        self, change: Callable[..., JobRecord | None], job_id: str, **kwargs: object
    ) -> JobRecord | None:
        """A terminal record write, retried while Redis is briefly away (a restart)."""
        delay = 0.5
        deadline = time.monotonic() + self.settings.worker_dead_after_s
        while True:
            try:
                return change(job_id, **kwargs)
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _forget(self, job_id: str) -> None:
        try:
            self.store.redis.hdel(self.running_key, job_id)
        except RedisError:
            pass  # the maintenance scan drops entries of finished jobs


def run_bookkeeping(calls: list[Callable[[], None]]) -> None:
    """Run and empty `calls` (a batch's metrics and ETA folds, written after its results): a
    failure is logged and the rest still run, so bookkeeping never fails a delivered batch (as on
    the progress publisher's thread, where the ETA folds ran before)."""
    while calls:
        call = calls.pop(0)
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a lost ETA sample must not fail the batch
            log.warning("batch.bookkeeping_failed", extra={"error": repr(exc)})


class StepReport(NamedTuple):
    """One step of one job, waiting to be written with the others of the batch."""

    job_id: str
    step: int
    total: int
    preview: Image | None  # only on the steps the request wants a preview of
    request: GenerationRequest


def _preview_url(item: StepReport) -> str | None:
    preview = item.request.preview
    if item.preview is None or preview is None:
        return None
    return preview_data_url(item.preview, preview.max_px)


def _wants_preview(every_n: int, step: int, total: int) -> bool:
    return step % every_n == 0 or step == total


def _json(value: dict) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
