"""API keys: every /v1 route needs a valid Bearer key, and a key sees only its own jobs."""

from __future__ import annotations

import pytest
from api_helpers import check_error

OK = {"prompt": "a red circle above a blue square", "steps": 3}
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


@pytest.fixture
def client(make_settings, make_api_client):
    return make_api_client(make_settings(api_keys=["key-alice", "key-bob"]))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/job_0123456789abcdef01234567"),
        ("POST", "/v1/jobs/job_0123456789abcdef01234567/cancel"),
        ("GET", "/v1/jobs/job_0123456789abcdef01234567/events"),
        ("GET", "/v1/jobs/job_0123456789abcdef01234567/images/0"),
        ("GET", "/v1/jobs/job_0123456789abcdef01234567/webhooks"),
        ("GET", "/v1/models"),
        ("GET", "/v1/loras"),
        ("POST", "/v1/loras/ink"),
        ("DELETE", "/v1/loras/ink"),
    ],
)
def test_every_v1_route_needs_a_key(client, method, path):
    json_body = OK if path == "/v1/jobs" and method == "POST" else None
    response = client.request(method, path, json=json_body)
    check_error(response, 401, "unauthorized", "Authorization: a Bearer API key is required")
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = client.request(method, path, json=json_body, headers={"Authorization": "Bearer nope"})
    check_error(wrong, 401, "unauthorized", "the API key is not valid")


def test_probes_and_docs_need_no_key(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_a_key_sees_only_its_own_jobs(client):
    alice_job = client.post("/v1/jobs", json=OK, headers=ALICE).json()["id"]
    bob_job = client.post("/v1/jobs", json=OK, headers=BOB).json()["id"]
    assert [job["id"] for job in client.get("/v1/jobs", headers=ALICE).json()["data"]] == [
        alice_job
    ]
    assert [job["id"] for job in client.get("/v1/jobs", headers=BOB).json()["data"]] == [bob_job]
    assert client.get(f"/v1/jobs/{alice_job}", headers=ALICE).status_code == 200
    # Another key's job is indistinguishable from a job that does not exist.
    for path in (
        f"/v1/jobs/{alice_job}",
        f"/v1/jobs/{alice_job}/events",
        f"/v1/jobs/{alice_job}/images/0",
        f"/v1/jobs/{alice_job}/webhooks",
    ):
        check_error(client.get(path, headers=BOB), 404, "not_found")
    check_error(client.post(f"/v1/jobs/{alice_job}/cancel", headers=BOB), 404)
    assert client.get(f"/v1/jobs/{alice_job}", headers=ALICE).json()["status"] == "queued"


def test_idempotency_keys_are_per_api_key(client):
    headers = {"Idempotency-Key": "same"}
    alice = client.post("/v1/jobs", json=OK, headers={**ALICE, **headers})
    bob = client.post("/v1/jobs", json={**OK, "steps": 5}, headers={**BOB, **headers})
    assert (alice.status_code, bob.status_code) == (202, 202)
    assert alice.json()["id"] != bob.json()["id"]
