"""Security headers on every response; LoRA names must match the whole pattern."""

from __future__ import annotations

import httpx
import pytest
from api_helpers import check_error


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/v1/models", 200),
        ("GET", "/v1/jobs/job_000000000000000000000000", 404),
        ("POST", "/v1/jobs", 422),
        ("GET", "/openapi.json", 200),
        ("GET", "/no/such/route", 404),
    ],
)
def test_every_response_carries_the_security_headers(api_client, method, path, status):
    response = api_client.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp  # no inline scripts
    assert "img-src 'self' data: blob:" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp


def test_docs_pages_may_run_their_inline_start_up_script(api_client):
    for path in ("/docs", "/redoc"):
        csp = api_client.get(path).headers["content-security-policy"]
        assert "script-src 'self' 'unsafe-inline'" in csp


def test_gateway_process_sends_no_server_header(start_service, settings):
    service = start_service(settings, workers=0)
    response = httpx.get(f"{service.base_url}/healthz")
    assert "server" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["abc%0A", "abc%0D", "abc%0A%0A", "ok%0Aevil"])
def test_lora_name_with_a_trailing_newline_is_refused(api_client, settings, name):
    response = api_client.post(f"/v1/loras/{name}", content=b"x" * 64)
    check_error(response, 422, "invalid_request", "name: must be")
    assert not settings.lora_dir.exists() or list(settings.lora_dir.iterdir()) == []


def test_an_unhandled_error_500_carries_the_security_headers(settings):
    """A 500 written by Starlette's ServerErrorMiddleware (outermost) once had none of them."""
    from fastapi.testclient import TestClient

    from generative_service.api import create_app

    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("a bug in a route")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    check_error(response, 500, "internal_error", "internal server error")
    assert "a bug in a route" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
