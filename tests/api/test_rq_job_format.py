"""The submit script writes RQ's own job hash: what `Queue.enqueue_call` would write, field for field.

The gateway fills a per-queue template instead of building an RQ Job per submit (queue.py
RQJobTemplate), so this checks the result against RQ itself, for anonymous and per-key queues,
and that a template RQ disagrees with is never used.
"""

from __future__ import annotations

from rq import Retry
from rq.job import Job

from generative_service.jobs import JobStore
from generative_service.keys import Ttl
from generative_service.queue import GENERATE_FUNC, RQJobTemplate
from generative_service.schemas import GenerationRequest

REQUEST = GenerationRequest(prompt="a red circle", width=64, height=64, steps=2)
TIMES = ("created_at", "enqueued_at")


def _rq_own_hash(redis, store: JobStore, record) -> dict:
    """Enqueue the same call under the same id with RQ itself and read back what RQ wrote."""
    settings = store.settings
    redis.delete(f"rq:job:{record.id}")
    store.queue.rq_queue_of(record).enqueue_call(
        GENERATE_FUNC,
        args=(record.id,),
        job_id=record.id,
        timeout=settings.job_timeout_s,
        result_ttl=Ttl.retention(settings),
        failure_ttl=Ttl.retention(settings),
        retry=Retry(max=settings.job_retries) if settings.job_retries else None,
    )
    return redis.hgetall(f"rq:job:{record.id}")


def test_submitted_rq_job_is_what_rq_enqueue_writes(redis, make_settings):
    store = JobStore(redis, make_settings(api_keys=["key-a"]))
    for owner in ("anonymous", "key_a"):
        for _ in range(2):  # the first submit builds the queue's template, the second uses it
            record, created = store.create(REQUEST, owner=owner)
            assert created
            ours = redis.hgetall(f"rq:job:{record.id}")
            job = Job.fetch(record.id, connection=redis)
            assert (job.func_name, job.args, job.origin) == (
                GENERATE_FUNC,
                (record.id,),
                store.queue.rq_queue_of(record).name,
            )
            assert job.get_status() == "queued"
            theirs = _rq_own_hash(redis, store, record)
            assert set(ours) == set(theirs)
            for field in ours:
                if field.decode() not in TIMES:
                    assert ours[field] == theirs[field], field
    # ...and the fast path (the filled template) is the one in use.
    assert store.queue._rq_templates and all(t.exact for t in store.queue._rq_templates.values())


def test_a_template_rq_disagrees_with_is_not_used():
    calls = []

    def build(job_id: str) -> dict:  # an RQ whose encoding the template cannot reproduce
        calls.append(job_id)
        return {"created_at": "t", "enqueued_at": "t", "description": f"f({job_id!r})",
                "data": b"other-encoding-" + job_id.encode()}  # fmt: skip

    import pickle

    template = RQJobTemplate(build, pickle)
    assert not template.exact
    assert template.fields("job_abc")["data"] == b"other-encoding-job_abc"
    assert calls[-1] == "job_abc"
