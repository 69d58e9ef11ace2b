"""Per-key waiting bound, Retry-After from the backlog, and positions kept through cancels."""

from __future__ import annotations

from support import check_error

from generative_service.jobs import JobStore

OK = {"prompt": "two green triangles", "steps": 2}
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


def test_one_key_cannot_fill_the_queue_for_another(make_settings, make_api_client):
    client = make_api_client(
        make_settings(api_keys=["key-a", "key-b"], max_queued=10, max_queued_per_key=3)
    )
    accepted = [client.post("/v1/jobs", json=OK, headers=A) for _ in range(3)]
    assert [response.status_code for response in accepted] == [202, 202, 202]
    rejected = client.post("/v1/jobs", json=OK, headers=A)
    error = check_error(rejected, 429, "queue_full", "this API key has 3 jobs waiting")
    assert "GENSVC_MAX_QUEUED_PER_KEY=3" in error["message"]
    assert int(rejected.headers["retry-after"]) >= 1
    # The other key is untouched by A's backlog.
    assert client.post("/v1/jobs", json=OK, headers=B).status_code == 202
    # A place of A's frees when one of A's jobs leaves the queue.
    client.post(f"/v1/jobs/{accepted[0].json()['id']}/cancel", headers=A)
    assert client.post("/v1/jobs", json=OK, headers=A).status_code == 202


def test_retry_after_grows_with_the_backlog(make_settings, redis):
    settings = make_settings(max_batch_images=4)
    store = JobStore(redis, settings)
    # A batch of 4 images in 30 x 100 ms: 1.33 jobs/s.
    store.queue.record_step_times(64, 64, [100.0])
    assert store.queue.retry_after_s(10) == 1
    assert store.queue.retry_after_s(1000) == 75  # a tenth of the backlog at that rate


def test_positions_follow_cancels_and_the_failed_submit_holds_no_place(
    make_settings, make_api_client
):
    client = make_api_client(make_settings(max_queued=3))
    ids = [client.post("/v1/jobs", json=OK).json()["id"] for _ in range(3)]
    assert client.post("/v1/jobs", json={**OK, "steps": 0}).status_code == 422
    client.post(f"/v1/jobs/{ids[1]}/cancel")
    assert [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids] == [1, None, 2]
    # The rejected submit took nothing: exactly one place is free after the cancel.
    assert client.post("/v1/jobs", json=OK).json()["queue_position"] == 3
    assert client.post("/v1/jobs", json=OK).status_code == 429
