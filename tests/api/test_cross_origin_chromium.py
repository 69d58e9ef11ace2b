"""A page on another origin follows a job in headless Chromium against a real gateway process:

- without API keys, a plain browser `EventSource` (CORS via GENSVC_CORS_ORIGINS) gets every event
  and stops for good after the terminal one (the reconnect is answered 204);
- with API keys, where `EventSource` cannot send `Authorization`, `fetch` with the header and a
  streamed body reads the same events (the page runs docs/browsers.md's `follow` itself);
- a page on an origin that is not listed reads nothing.

The job is moved through its states by FakeWorker (the worker's own JobStore transitions).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import wait_for

pytest.importorskip("selenium")

KEY = "page-key"
PAGE = """<!doctype html>
<meta charset="utf-8"><title>another origin</title>
<script>
const params = new URLSearchParams(location.search);
const API = params.get("api");
window.seen = [];
window.errors = [];
const TYPES = ["queued", "started", "progress", "stage", "succeeded", "failed", "canceled"];
/*FOLLOW*/
if (!params.get("key")) {
  const source = new EventSource(`${API}/v1/jobs/${params.get("job")}/events`);
  for (const type of TYPES) source.addEventListener(type, (e) => window.seen.push(type));
  source.onerror = () => window.errors.push(source.readyState);
} else {
  follow(params.get("job"), params.get("key"), (type, data) => window.seen.push(type))
    .then(() => window.errors.push("end"), (error) => window.errors.push(String(error)));
}
</script>
"""


def docs_follow() -> str:
    """docs/browsers.md's `follow` (fetch with Authorization): the page runs the documented code."""
    text = (Path(__file__).resolve().parents[2] / "docs/browsers.md").read_text()
    blocks = text.split("```js\n")[1:]
    [block] = [block.split("```")[0] for block in blocks if "async function follow(" in block]
    return block


EXPECTED = ["queued", "started", "progress", "progress", "progress", "stage", "succeeded"]


@pytest.fixture
def page_origins(tmp_path: Path) -> Iterator[list[str]]:
    """Two static web servers on 127.0.0.1 (different ports: different origins) serving PAGE."""
    (tmp_path / "page.html").write_text(PAGE.replace("/*FOLLOW*/", docs_follow()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{server.server_address[1]}" for server in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def _submit(base_url: str, headers: dict | None = None) -> str:
    answer = httpx.post(
        f"{base_url}/v1/jobs", json={"prompt": "a red square", "steps": 3}, headers=headers
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _open(browser, page_origin: str, base_url: str, job_id: str, key: str = "") -> None:
    query = httpx.QueryParams({"api": base_url, "job": job_id, **({"key": key} if key else {})})
    browser.get(f"{page_origin}/page.html?{query}")


def _seen(browser) -> list[str]:
    return browser.execute_script("return window.seen")


def _errors(browser) -> list:
    return browser.execute_script("return window.errors")


def test_eventsource_on_another_origin_follows_a_job_and_stops(
    make_settings, start_service, make_fake_worker, page_origins, browser
):
    page, stranger = page_origins
    settings = make_settings(cors_origins=[page])
    gateway = start_service(settings, workers=0)
    worker = make_fake_worker(settings)
    job_id = _submit(gateway.base_url)

    _open(browser, page, gateway.base_url, job_id)
    wait_for(lambda: _seen(browser) == ["queued"], timeout=30, what="the queued event in the page")
    worker.run(job_id)
    # The stream ends after `succeeded`; the browser reconnects with Last-Event-ID, gets 204 and
    # closes for good (readyState 2): before, it reconnected every 2 s forever.
    wait_for(lambda: 2 in _errors(browser), timeout=30, what="the EventSource to close")
    assert _seen(browser) == EXPECTED

    # A page whose origin is not listed gets no CORS headers: the browser hands it nothing.
    _open(browser, stranger, gateway.base_url, job_id)
    wait_for(lambda: 2 in _errors(browser), timeout=30, what="the refused EventSource to close")
    assert _seen(browser) == []


def test_fetch_stream_with_a_key_on_another_origin_reads_the_events(
    make_settings, start_service, make_fake_worker, page_origins, browser
):
    page, _ = page_origins
    settings = make_settings(cors_origins=[page], api_keys=[KEY])
    gateway = start_service(settings, workers=0)
    job_id = _submit(gateway.base_url, headers={"Authorization": f"Bearer {KEY}"})
    make_fake_worker(settings).run(job_id)

    _open(browser, page, gateway.base_url, job_id, key=KEY)
    wait_for(lambda: _errors(browser), timeout=30, what="the streamed body to end")
    assert _errors(browser) == ["end"] and _seen(browser) == EXPECTED
