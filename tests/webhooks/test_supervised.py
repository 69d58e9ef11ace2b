"""`gensvc up`'s supervisor and the webhook worker killed hard: the worker's RQ scheduler (its
child) goes with it, the restarted worker takes over scheduling, and a retry that was pending
when the worker died is still delivered."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from support import process_alive

from generative_service.cli.supervisor import Supervisor, child_env, service_children
from generative_service.jobs import JobStore

from .conftest import SECRETS, Receiver, submit, wait_for
from .test_outbox import run_job


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":  # ppid, state
                found.append(int(entry.name))
    return found


@pytest.mark.slow  # the dead scheduler's lock must expire (RQ: 61 s) before retries resume
def test_killed_webhook_worker_leaves_no_scheduler_and_its_pending_retry_is_delivered(
    redis_client, settings, receiver: Receiver, tmp_path
) -> None:
    settings = settings.model_copy(update={"webhook_retry_schedule": ["5", "5", "5"]})
    env = child_env({
        "GENSVC_KEY_PREFIX": settings.key_prefix,
        "GENSVC_REDIS_URL": "redis://127.0.0.1:6379/0",
        "GENSVC_WEBHOOK_ALLOW_LOOPBACK": "true",
        "GENSVC_WEBHOOK_SECRETS": ",".join(SECRETS),
        "GENSVC_WEBHOOK_RETRY_SCHEDULE": "5,5,5",
        "GENSVC_WEBHOOK_TIMEOUT_S": "1",
    })  # fmt: skip
    (child,) = [c for c in service_children(host="127.0.0.1", port=0, workers=0)
                if c.name == "webhook-worker"]  # fmt: skip
    with open(tmp_path / "webhook-worker.log", "wb") as output:
        supervisor = Supervisor([child], env=env, output=output, log=lambda _: None)
        supervisor.start()
        stop = threading.Event()

        def supervise() -> None:  # run_forever's loop, minus the signal handlers (main thread only)
            while not stop.wait(0.2):
                supervisor.check()

        checker = threading.Thread(target=supervise, daemon=True)
        try:
            first = child.process.pid
            scheduler = wait_for(lambda: _children(first), what="the RQ scheduler child")[0]
            store = JobStore(redis_client, settings)
            receiver.script = [500]  # the first attempt fails: a retry is scheduled in 5 s
            record = submit(store, receiver.url())
            run_job(store, record.id)
            wait_for(lambda: len(receiver.requests) == 1, what="the first attempt")

            os.kill(first, signal.SIGKILL)  # before the retry is due
            checker.start()  # the supervisor notices, stops the group and restarts the worker
            wait_for(
                lambda: not process_alive(scheduler),
                timeout=15,
                what="the orphaned scheduler to go",
            )
            wait_for(lambda: child.process.pid != first and process_alive(child.process.pid),
                     what="the restarted worker")  # fmt: skip

            wait_for(lambda: len(receiver.requests) == 2, timeout=240, what="the pending retry")
            first_try, retry = receiver.requests
            assert first_try.headers["webhook-id"] == retry.headers["webhook-id"]
            assert first_try.body == retry.body
            assert child.restarts == 1 and process_alive(child.process.pid)
        finally:
            stop.set()
            supervisor.stop()
    assert not process_alive(scheduler)
