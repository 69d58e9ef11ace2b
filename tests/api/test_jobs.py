"""Submit, read, list, cancel, idempotency, Prefer: wait, backpressure and images, in-process.
A FakeWorker makes the transitions a GPU worker would."""

from __future__ import annotations

from api_helpers import check_error, png_size

from generative_service.jobs import JobStore

OK = {"prompt": "a red circle above a blue square", "steps": 3}


def test_submit_answers_202_with_location_and_resolved_request(api_client):
    response = api_client.post("/v1/jobs", json=OK)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["status"] == "queued" and job["queue_position"] == 1
    # The server fills every default: size from the model, and a seed the caller can reuse.
    assert (job["request"]["width"], job["request"]["height"]) == (64, 64)
    assert isinstance(job["request"]["seed"], int)
    assert job["request"]["sampler"] == "dpmpp_2m_karras" and job["request"]["num_images"] == 1
    assert api_client.get(job["links"]["self"]).json()["request"] == job["request"]


def test_queue_position_counts_waiting_jobs(api_client):
    ids = [api_client.post("/v1/jobs", json=OK).json()["id"] for _ in range(3)]
    assert [api_client.get(f"/v1/jobs/{job_id}").json()["queue_position"] for job_id in ids] == [
        1,
        2,
        3,
    ]


def test_get_unknown_job_is_404(api_client):
    check_error(
        api_client.get("/v1/jobs/job_0123456789abcdef01234567"),
        404,
        "not_found",
        "job 'job_0123456789abcdef01234567' not found",
    )
    check_error(api_client.get("/v1/jobs/../../etc"), 404, "not_found")


def test_list_newest_first_with_cursor_and_status_filter(api_client, fake_worker):
    ids = [
        api_client.post("/v1/jobs", json={**OK, "seed": index}).json()["id"] for index in range(5)
    ]
    fake_worker.run(ids[1])
    first = api_client.get("/v1/jobs?limit=2").json()
    assert [job["id"] for job in first["data"]] == [ids[4], ids[3]]
    second = api_client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}").json()
    third = api_client.get(f"/v1/jobs?limit=2&cursor={second['next_cursor']}").json()
    assert [job["id"] for job in second["data"] + third["data"]] == [ids[2], ids[1], ids[0]]
    assert third["next_cursor"] is None
    succeeded = api_client.get("/v1/jobs?status=succeeded").json()["data"]
    assert [job["id"] for job in succeeded] == [ids[1]]


def test_cancel_queued_job_removes_it_from_the_queue(api_client, settings, redis):
    first, second = (api_client.post("/v1/jobs", json=OK).json()["id"] for _ in range(2))
    response = api_client.post(f"/v1/jobs/{first}/cancel")
    assert response.status_code == 200
    assert (
        response.json()["status"] == "canceled" and response.json()["error"]["code"] == "canceled"
    )
    store = JobStore(redis, settings)
    assert first not in store.queue.rq_queue("default").job_ids
    assert api_client.get(f"/v1/jobs/{second}").json()["queue_position"] == 1


def test_cancel_running_job_is_accepted_and_flags_the_worker(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.start(job_id)
    response = api_client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert fake_worker.store.is_cancel_requested(job_id)


def test_cancel_ended_job_is_409(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.run(job_id)
    check_error(
        api_client.post(f"/v1/jobs/{job_id}/cancel"),
        409,
        "conflict",
        f"job {job_id} already succeeded",
    )
    api_client.post("/v1/jobs", json=OK)
    check_error(api_client.post("/v1/jobs/job_0123456789abcdef01234567/cancel"), 404)


def test_idempotency_key_replays_the_same_job(api_client, fake_worker):
    headers = {"Idempotency-Key": "order-42"}
    first = api_client.post("/v1/jobs", json=OK, headers=headers)
    replay = api_client.post("/v1/jobs", json=OK, headers=headers)
    assert (first.status_code, replay.status_code) == (202, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["location"] == first.headers["location"]
    fake_worker.run(first.json()["id"])
    after_end = api_client.post("/v1/jobs", json=OK, headers=headers)
    assert after_end.status_code == 200 and after_end.json()["status"] == "succeeded"
    assert len(api_client.get("/v1/jobs").json()["data"]) == 1


def test_idempotency_key_with_another_body_is_409(api_client):
    api_client.post("/v1/jobs", json=OK, headers={"Idempotency-Key": "k1"})
    response = api_client.post(
        "/v1/jobs", json={**OK, "steps": 4}, headers={"Idempotency-Key": "k1"}
    )
    check_error(response, 409, "conflict", "Idempotency-Key")
    other_key = api_client.post(
        "/v1/jobs", json={**OK, "steps": 4}, headers={"Idempotency-Key": "k2"}
    )
    assert other_key.status_code == 202


def test_prefer_wait_returns_200_when_the_job_finishes(api_client, fake_worker):
    with fake_worker.on_first_job(fake_worker.run):
        response = api_client.post("/v1/jobs", json=OK, headers={"Prefer": "respond-async, wait=5"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded" and len(response.json()["images"]) == 1
    assert response.headers["preference-applied"] == "wait=5"


def test_prefer_wait_times_out_with_202(api_client):
    response = api_client.post("/v1/jobs", json=OK, headers={"Prefer": "wait=1"})
    assert response.status_code == 202 and response.json()["status"] == "queued"


def test_prefer_wait_is_capped_by_settings(make_settings, make_api_client):
    client = make_api_client(make_settings(wait_max_s=1))
    response = client.post("/v1/jobs", json=OK, headers={"Prefer": "wait=3600"})
    assert response.status_code == 202 and response.headers["preference-applied"] == "wait=1"


def test_queue_full_is_429_with_retry_after_and_keeps_accepted_jobs(make_settings, make_api_client):
    client = make_api_client(make_settings(max_queued=2))
    accepted = [client.post("/v1/jobs", json=OK) for _ in range(2)]
    assert [response.status_code for response in accepted] == [202, 202]
    error = check_error(
        client.post("/v1/jobs", json=OK), 429, "queue_full", "queue is full (2 jobs waiting)"
    )
    rejected = client.post("/v1/jobs", json=OK)
    assert int(rejected.headers["retry-after"]) >= 1
    assert error["details"]["retry_after_s"] >= 1
    assert {job["id"] for job in client.get("/v1/jobs").json()["data"]} == {
        r.json()["id"] for r in accepted
    }
    client.post(f"/v1/jobs/{accepted[0].json()['id']}/cancel")
    assert client.post("/v1/jobs", json=OK).status_code == 202


def test_images_download_with_content_type(api_client, fake_worker):
    job_id = api_client.post(
        "/v1/jobs", json={**OK, "num_images": 2, "output_format": "webp"}
    ).json()["id"]
    check_error(api_client.get(f"/v1/jobs/{job_id}/images/0"), 404, message="(the job is queued)")
    fake_worker.run(job_id)
    job = api_client.get(f"/v1/jobs/{job_id}").json()
    assert [image["seed"] for image in job["images"]] == [
        job["request"]["seed"],
        job["request"]["seed"] + 1,
    ]
    for image in job["images"]:
        response = api_client.get(image["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/webp" == image["content_type"]
        assert png_size(response.content) == (64, 64)
    check_error(
        api_client.get(f"/v1/jobs/{job_id}/images/2"),
        404,
        "not_found",
        f"image 2 of job {job_id} not found",
    )


def test_blocked_image_is_404(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json={**OK, "num_images": 2}).json()["id"]
    fake_worker.run(job_id, blocked=(1,))
    job = api_client.get(f"/v1/jobs/{job_id}").json()
    assert job["images"][1]["url"] is None and job["images"][1]["blocked"] is True
    assert api_client.get(f"/v1/jobs/{job_id}/images/0").headers["content-type"] == "image/png"
    check_error(
        api_client.get(f"/v1/jobs/{job_id}/images/1"), 404, message="blocked by the safety filter"
    )


def test_webhook_attempts_route(api_client):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    response = api_client.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200 and response.json() == {"data": []}
    check_error(api_client.get("/v1/jobs/job_0123456789abcdef01234567/webhooks"), 404)


def test_a_job_a_worker_has_taken_but_not_started_is_next_not_null(api_client, settings, redis):
    job = api_client.post("/v1/jobs", json=OK).json()
    assert job["status"] == "queued" and job["queue_position"] == 1
    # A worker's dequeue: the RQ job leaves the queue before the record says running.
    store = JobStore(redis, settings)
    assert store.queue.rq_queue(store.get(job["id"]).queue).remove(job["id"]) == 1
    again = api_client.get(f"/v1/jobs/{job['id']}").json()
    assert again["status"] == "queued" and again["queue_position"] == 1  # was null
