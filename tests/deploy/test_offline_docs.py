"""/docs (Swagger UI) and /redoc render in headless Chromium with no host but the service's own
resolvable: every asset comes from the service (the fastapi-offline package ships them)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from browser import CHROMIUM_ARGS


def rendered_dom(url: str, profile) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom with a virtual-time budget)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test-deps installs it)")
    argv = [browser, *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
            "--dump-dom", url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_docs_and_redoc_render_offline(settings, start_service, tmp_path):
    service = start_service(settings, workers=0)
    for page in ("/docs", "/redoc"):
        html = httpx.get(service.base_url + page).text
        assert "cdn." not in html and "googleapis" not in html, f"{page} loads from a CDN"

    swagger = rendered_dom(f"{service.base_url}/docs", tmp_path / "swagger")
    assert 'class="swagger-ui' in swagger
    assert "opblock-summary" in swagger and "Submit a generation job" in swagger
    assert "/openai/v1/images/generations" in swagger and "/sdapi/v1/txt2img" in swagger

    redoc = rendered_dom(f"{service.base_url}/redoc", tmp_path / "redoc")
    assert "Submit a generation job" in redoc and "Create images (OpenAI Images API)" in redoc
    assert "redoc-wrap" in redoc or "api-content" in redoc
