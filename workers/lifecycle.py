"""Drive one RQ job through RQ's own bookkeeping while the GPU worker runs it inside a batch.

RQ hands an in-process worker one job at a time and calls `perform_job` on it. A batching worker
runs several jobs in one pipeline call instead, so for each job it calls the same steps RQ's
`SimpleWorker.execute_job`/`perform_job` would: `prepare_execution` (execution record, started
registry, worker BUSY), `prepare_job_execution` (status STARTED), then RQ's success or failure
handling (finished/failed registries, results, retries, callbacks, dependents). Cancel and
hand-back end an execution the way RQ's own cancel and requeue do.

NOTE: `_finalize_success` / `_finalize_failure` are RQ's terminal handlers (rq==3.0.0 is pinned);
calling them keeps callbacks, results and registries exactly as a plain RQ worker leaves them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rq.callbacks import execute_failure_callback
from rq.exceptions import InvalidJobOperation
from rq.job import JobStatus
from rq.utils import now

from generative_service.errors import InvalidRequest

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue
    from rq.worker import BaseWorker


def start(worker: BaseWorker, job: Job) -> Execution:
    """Register `job` as running on `worker` (execution, started registry, status STARTED)."""
    execution = worker.prepare_execution(job)
    # The job was moved to the queue's intermediate list when it was dequeued or claimed for a
    # batch; preparing removes it from there (a no-op when it was popped without one).
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    job.started_at = now()
    return execution


def succeed(worker: BaseWorker, job: Job, queue: Queue, execution: Execution, result: Any) -> None:
    """RQ's success handling: FINISHED, finished registry, result, dependents."""
    worker._finalize_success(job, queue, execution, result)


def fail(
    worker: BaseWorker, job: Job, queue: Queue, execution: Execution, error: BaseException
) -> None:
    """RQ's failure handling: FAILED, failed registry, failure result. Never retried.

    NOTE: RQ retries (GENSVC_JOB_RETRIES) are for jobs whose worker died. A job that failed on its
    own merits (bad input, a broken model) would fail again, so its retries are dropped here.
    """
    job.retries_left = 0
    if job.started_at is None:
        job.started_at = now()
    exc_info = (type(error), error, error.__traceback__)
    if not isinstance(error, InvalidRequest):
        worker._finalize_failure(job, queue, execution, exc_info)
        return
    # Bad input is the client's error, not the worker's: the same steps as `_finalize_failure`
    # without its ERROR log line and traceback.
    job._status = JobStatus.FAILED
    worker.handle_execution_ended(job, queue, job.failure_callback_timeout)
    execute_failure_callback(job, worker.death_penalty_class, *exc_info)
    worker.handle_job_failure(
        job, queue=queue, exc_string=f"{error.code}: {error.message}", execution=execution
    )


def _end_execution(worker: BaseWorker, job: Job, queue: Queue, execution: Execution | None) -> None:
    """Drop the job's execution and its entry in the queue's intermediate (in-progress) list."""
    with worker.connection.pipeline() as pipeline:
        if execution is not None:
            worker.cleanup_execution(job, pipeline=pipeline, execution=execution)
        pipeline.lrem(queue.intermediate_queue_key, 0, job.id)
        pipeline.execute()


def cancel(worker: BaseWorker, job: Job, queue: Queue, execution: Execution | None) -> None:
    """End the execution and move the job to RQ's canceled registry (status CANCELED)."""
    _end_execution(worker, job, queue, execution)
    try:
        job.cancel()
    except InvalidJobOperation:
        pass  # the gateway canceled it in RQ already


def hand_back(worker: BaseWorker, job: Job, queue: Queue, execution: Execution | None) -> None:
    """End the execution and put the job back at the front of its queue (no retry is used)."""
    _end_execution(worker, job, queue, execution)
    job.started_at = None
    job.ended_at = None
    queue.enqueue_job(job, at_front=True)
