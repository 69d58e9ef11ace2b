"""Every error, including unknown routes, wrong methods and Redis outages, uses the common shape,
and no response carries a stack trace."""

from __future__ import annotations

from api_helpers import check_error

OK = {"prompt": "a red circle above a blue square", "steps": 3}


def test_unknown_route_is_404_in_the_error_shape(api_client):
    check_error(api_client.get("/v2/jobs"), 404, "not_found", "no route GET /v2/jobs")
    check_error(api_client.post("/v1/jobs/job_0123456789abcdef01234567/retry"), 404, "not_found")


def test_wrong_method_is_405_listing_allowed_methods(api_client):
    response = api_client.put("/v1/jobs", json=OK)
    check_error(
        response,
        405,
        "method_not_allowed",
        "method PUT is not allowed on /v1/jobs; allowed: GET, POST",
    )
    assert response.headers["allow"] == "GET, POST"
    check_error(
        api_client.delete("/v1/jobs/job_0123456789abcdef01234567"), 405, "method_not_allowed"
    )


def test_redis_down_is_503_on_submit_and_readyz(make_settings, make_api_client):
    # Port 1 is closed: the gateway cannot reach Redis.
    client = make_api_client(make_settings(redis_url="redis://127.0.0.1:1/0"))
    response = client.post("/v1/jobs", json=OK)
    check_error(response, 503, "unavailable", "Redis is unavailable")
    assert response.headers["retry-after"]
    check_error(client.get("/v1/jobs"), 503, "unavailable")
    check_error(client.get("/v1/jobs/job_0123456789abcdef01234567/events"), 503, "unavailable")
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready" and body["checks"]["redis"]["ok"] is False
    assert "cannot reach Redis" in body["checks"]["redis"]["reason"]
    assert body["error"]["code"] == "unavailable"
    assert client.get("/healthz").status_code == 200


def test_bad_input_never_500s_and_bugs_500_without_a_trace(api_client, monkeypatch):
    store = api_client.app.state.store

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(store, "list", broken)
    response = api_client.get("/v1/jobs")
    error = check_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.text and "RuntimeError" not in response.text
    assert error["message"] == "internal server error; the gateway log has the details"


def test_redis_outage_then_recovery(make_settings, make_api_client, tmp_path):
    """A private redis-server is stopped and started again under the running gateway."""
    import shutil
    import socket
    import subprocess
    import time

    import pytest

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return process
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    process = start()
    try:
        client = make_api_client(make_settings(redis_url=f"redis://127.0.0.1:{port}/0"))
        assert client.post("/v1/jobs", json=OK).status_code == 202
        process.terminate()
        process.wait(10)
        check_error(client.post("/v1/jobs", json=OK), 503, "unavailable")
        assert client.get("/readyz").status_code == 503
        process = start()
        assert client.post("/v1/jobs", json=OK).status_code == 202
        assert client.get("/readyz").json()["checks"]["redis"] == {"ok": True}
    finally:
        process.terminate()
        process.wait(10)
