"""The OpenAI and AUTOMATIC1111 surfaces in-process (a FakeWorker runs the jobs): image URLs,
sampler names, `<lora:...>` tags, progress of a job. The real clients: tests/clients."""

from __future__ import annotations

import threading
import time

import pytest

from generative_service.api.routes.a1111 import (
    Txt2ImgRequest,
    sampler_of,
    split_loras,
    to_generation_requests,
)


@pytest.mark.parametrize(
    ("fields", "ours"),
    [
        ({"sampler_name": "DPM++ 2M Karras"}, "dpmpp_2m_karras"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, "dpmpp_2m_karras"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "automatic"}, "dpmpp_2m"),
        ({"sampler_index": "euler a"}, "euler_a"),
        ({"sampler_name": "DDIM"}, "ddim"),
        ({"sampler_name": "UniPC"}, "unipc"),
        ({}, "dpmpp_2m_karras"),
    ],
)
def test_sampler_names_map_to_ours(fields, ours):
    assert sampler_of(Txt2ImgRequest(**fields)) == ours


def test_lora_tags_leave_the_prompt():
    assert split_loras("<lora:ink:0.5> a cat, <LORA:pastel> ") == (
        "a cat,",
        [{"name": "ink", "scale": 0.5}, {"name": "pastel", "scale": 1.0}],
    )
    assert split_loras("a <lora:ink:0.7:0.2> dog")[1] == [{"name": "ink", "scale": 0.7}]


def test_a1111_random_seeds_are_32_bit_like_a1111s():
    """seed -1: A1111 picks below 2**32, and its clients are mostly JavaScript (SillyTavern, web
    UIs), whose numbers are exact only up to 2**53: a 62-bit seed came back changed, and reusing
    it drew another image."""
    for _ in range(50):
        jobs = to_generation_requests(Txt2ImgRequest(prompt="x", seed=-1, batch_size=4, n_iter=3))
        seeds = [job.seed + index for job in jobs for index in range(job.num_images)]
        assert seeds == list(range(seeds[0], seeds[0] + 12)) and seeds[0] >= 0
        assert seeds[-1] < 2**32 + 12


def test_progress_reports_the_running_job(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json={"prompt": "a red square", "steps": 10}).json()["id"]
    idle = api_client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 1
    fake_worker.start(job_id)
    fake_worker.store.report_progress(job_id, 4, 10)
    busy = api_client.get("/sdapi/v1/progress").json()
    assert busy["progress"] == 0.4 and busy["state"]["sampling_step"] == 4
    assert busy["state"]["sampling_steps"] == 10 and busy["state"]["job"] == job_id


def _finish_jobs_in_background(fake_worker, count: int) -> threading.Thread:
    def run() -> None:
        done: set[str] = set()
        for _ in range(400):
            for job in fake_worker.store.list(owner="anonymous")[0]:
                if job.id not in done:
                    fake_worker.run(job.id)
                    done.add(job.id)
            if len(done) >= count:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_openai_url_response_points_at_the_v1_download(api_client, fake_worker):
    worker = _finish_jobs_in_background(fake_worker, 1)
    response = api_client.post(
        "/openai/v1/images/generations",
        json={"prompt": "a red square", "n": 2, "response_format": "url", "size": "64x64"},
    )
    worker.join()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == "64x64" and body["output_format"] == "png"
    urls = [item["url"] for item in body["data"]]
    assert all(url.startswith("http://testserver/v1/jobs/job_") for url in urls)
    assert [api_client.get(url).headers["content-type"] for url in urls] == ["image/png"] * 2


def test_openai_wait_that_ends_first_is_504_and_says_not_to_retry(make_settings, make_api_client):
    client = make_api_client(make_settings(compat_wait_s=0.2))
    response = client.post("/openai/v1/images/generations", json={"prompt": "a red square"})
    assert response.status_code == 504 and response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "timeout"
    job_id = error["message"].split()[1]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # the job is kept


def test_a1111_blocked_or_failed_job_is_an_error(api_client, fake_worker):
    def fail_first() -> None:
        for _ in range(400):
            jobs = fake_worker.store.list(owner="anonymous")[0]
            if jobs:
                fake_worker.start(jobs[0].id)
                fake_worker.store.mark_failed(jobs[0].id, code="generation_failed", message="boom")
                return
            time.sleep(0.02)

    thread = threading.Thread(target=fail_first)
    thread.start()
    response = api_client.post(
        "/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64}
    )
    thread.join()
    assert response.status_code == 500
    assert response.json()["error"] == "generation_failed" and "boom" in response.json()["detail"]


def test_a1111_lora_list_answers(api_client):
    """GET /sdapi/v1/loras lists the adapters the caller may use (it once raised a TypeError)."""
    response = api_client.get("/sdapi/v1/loras")
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), list)


def test_guidance_omitted_is_the_models_default_on_every_surface(
    make_settings, make_api_client, make_fake_worker, tmp_path
):
    """A request without guidance runs the model's own (bundle.json `default_guidance`, the value
    its evaluation picked), and the job shows it; a value the client sends wins. A1111 clients
    always send cfg_scale (A1111's own default is 7)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "bundle.json").write_text('{"name": "m", "default_size": 64, "default_guidance": 2.5}')
    settings = make_settings(model=str(model), compat_wait_s=30)
    client, worker = make_api_client(settings), make_fake_worker(settings)
    assert client.get("/v1/models").json()["default_guidance"] == 2.5

    def guidance_of(job_id: str) -> float:
        return client.get(f"/v1/jobs/{job_id}").json()["request"]["guidance_scale"]

    omitted = client.post("/v1/jobs", json={"prompt": "a red circle"}).json()
    assert omitted["request"]["guidance_scale"] == 2.5 == guidance_of(omitted["id"])
    sent = client.post("/v1/jobs", json={"prompt": "a red circle", "guidance_scale": 6}).json()
    assert guidance_of(sent["id"]) == 6.0
    off = client.post("/v1/jobs", json={"prompt": "a red circle", "guidance_scale": 0}).json()
    assert guidance_of(off["id"]) == 0.0  # 0 is a value (guidance off), not "omitted"

    background = _finish_jobs_in_background(worker, 5)  # the three above, then one per surface
    openai = client.post("/openai/v1/images/generations", json={"prompt": "a red circle"})
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "cfg_scale": 4,
                                                    "width": 64, "height": 64})  # fmt: skip
    background.join()
    assert openai.status_code == 200 and a1111.status_code == 200, (openai.text, a1111.text)
    assert a1111.json()["parameters"]["cfg_scale"] == 4
    assert "CFG scale: 4," in a1111.json()["info"]
    jobs = client.get("/v1/jobs?limit=2").json()["data"]  # newest first: A1111's, OpenAI's
    assert [job["request"]["guidance_scale"] for job in jobs] == [4.0, 2.5]
