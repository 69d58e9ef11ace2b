"""`Prefer: wait=N` that ends before the job does answers the job as it stands then, not as submitted."""

from __future__ import annotations

OK = {"prompt": "a red square", "steps": 10}


def test_unfinished_wait_answers_the_running_job_not_the_submit_snapshot(api_client, fake_worker):
    def start_and_progress(job_id: str) -> None:
        fake_worker.start(job_id)
        for step in range(1, 8):
            fake_worker.store.report_progress(job_id, step, 10)

    with fake_worker.on_first_job(start_and_progress):
        response = api_client.post("/v1/jobs", json=OK, headers={"Prefer": "wait=2"})
    assert response.status_code == 202 and response.headers["preference-applied"] == "wait=2"
    job = response.json()
    assert job["status"] == "running" and job["started_at"] is not None
    assert job["progress"]["step"] == 7 and job["progress"]["percent"] == 70.0
    assert job["queue_position"] is None
