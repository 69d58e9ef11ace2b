"""The committed API documents match the app, and they show real, valid examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from generative_service import openapi_export
from generative_service.schemas import GenerationRequest, JobResource

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH_MODELS = ("demo", "tiny")  # the models the package ships or builds itself


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    return openapi_export.render_all()


@pytest.fixture(scope="module")
def spec(rendered) -> dict:
    return json.loads(rendered[openapi_export.OPENAPI_PATH])


@pytest.fixture(scope="module")
def collection(rendered) -> dict:
    return json.loads(rendered[openapi_export.POSTMAN_PATH])


def test_committed_documents_match_the_app(rendered):
    stale = [
        str(path)
        for path, text in rendered.items()
        if not (ROOT / path).exists() or (ROOT / path).read_text() != text
    ]
    assert stale == [], f"out of date: {stale}; run `make openapi` and commit the result"


def test_check_mode_detects_drift(tmp_path, rendered):
    for path, text in rendered.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert openapi_export.main(["--check", "--root", str(tmp_path)]) == 0
    tampered = json.loads((tmp_path / openapi_export.OPENAPI_PATH).read_text())
    tampered["paths"].pop("/v1/jobs")
    (tmp_path / openapi_export.OPENAPI_PATH).write_text(json.dumps(tampered))
    assert openapi_export.main(["--check", "--root", str(tmp_path)]) == 1


def test_submit_documents_a_valid_request_and_job_example(spec):
    operation = spec["paths"]["/v1/jobs"]["post"]
    body = openapi_export.media_example(
        spec, operation["requestBody"]["content"]["application/json"]
    )
    request = GenerationRequest.model_validate(body)
    assert request.prompt.strip()
    accepted = operation["responses"]["202"]["content"]["application/json"]
    assert openapi_export.documented(spec, accepted, success=True)
    job = JobResource.model_validate(openapi_export.media_example(spec, accepted))
    assert job.id.startswith("job_")


def test_job_resource_example_is_valid(spec):
    media = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]
    assert openapi_export.documented(spec, media, success=True)
    job = JobResource.model_validate(openapi_export.media_example(spec, media))
    assert job.links.self.endswith(job.id)


def test_postman_collection_covers_every_operation(spec, collection):
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    in_spec = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in openapi_export.METHODS
    }
    in_postman = set()
    for folder in collection["item"][1:]:  # the reference folders, after the Walkthrough
        for item in folder["item"]:
            request = item["request"]
            assert request["url"]["raw"].startswith("{{baseUrl}}/"), item["name"]
            path = "/" + "/".join(request["url"]["path"])
            for name, value in openapi_export.PATH_VARIABLES.items():
                path = path.replace(value, "{" + name + "}")
            in_postman.add((request["method"], path))
    assert in_postman == in_spec


def test_postman_submit_sends_the_documented_example_and_keeps_the_job_id(spec, collection):
    submit = next(
        item
        for folder in collection["item"][1:]  # the reference folders, after the Walkthrough
        for item in folder["item"]
        if item["request"]["method"] == "POST" and item["request"]["url"]["path"] == ["v1", "jobs"]
    )
    sent = json.loads(submit["request"]["body"]["raw"])
    documented = openapi_export.media_example(
        spec, spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    )
    assert sent == documented
    assert {"key": "Content-Type", "value": "application/json"} in submit["request"]["header"]
    assert "pm.collectionVariables.set('jobId'" in "".join(submit["event"][0]["script"]["exec"])
    assert submit["response"], "the 202 example answer is missing"


def test_postman_walkthrough_asserts_every_answer_and_uploads_a_real_file(collection):
    walkthrough = collection["item"][0]
    assert walkthrough["name"] == "Walkthrough"
    names = [item["name"] for item in walkthrough["item"]]
    # Download before anything cancels; the cancel is of a second job, last.
    assert names.index("Wait for success") < names.index("Download the image")
    assert names[-2:] == ["Submit a second job", "Cancel the second job"]
    for item in walkthrough["item"]:
        tests = [e for e in item["event"] if e["listen"] == "test"]
        assert tests and "pm.test(" in "".join(tests[0]["script"]["exec"]), item["name"]
    uploads = [i["request"] for i in walkthrough["item"] if i["name"].startswith("Upload")]
    files = [f["src"] for f in uploads[0]["body"]["formdata"] if f["type"] == "file"]
    files.append(uploads[1]["body"]["file"]["src"])
    # scripts/postman runs newman in openapi/loras/<served model>/: a real file for each model.
    assert files == [openapi_export.LORA_FILE] * 2
    for model in WALKTHROUGH_MODELS:
        assert (ROOT / "openapi/loras" / model / openapi_export.LORA_FILE).stat().st_size > 1000
    # It deletes only the adapters it uploaded under names of its own.
    deleted = [
        i["request"]["url"]["raw"]
        for i in walkthrough["item"]
        if i["request"]["method"] == "DELETE"
    ]
    assert sorted(deleted) == [
        "{{baseUrl}}/v1/loras/{{loraBytesName}}",
        "{{baseUrl}}/v1/loras/{{loraName}}",
    ]
    setup = "".join(
        next(i for i in walkthrough["item"] if i["name"] == "List LoRA adapters")["event"][0][
            "script"
        ]["exec"]
    )
    assert "set('loraName', 'postman-' + Date.now())" in setup


def test_swagger_ui_and_redoc_are_served(settings_for_docs):
    from generative_service.api import create_app

    client = TestClient(create_app(settings_for_docs))
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "redoc" in redoc.text.lower()
    served = client.get("/openapi.json").json()
    assert "/v1/jobs" in served["paths"]


@pytest.fixture
def settings_for_docs(tmp_path):
    from generative_service.settings import Settings

    return Settings(
        storage_dir=tmp_path / "images", cache_dir=tmp_path / "cache", key_prefix="t_docs_unused"
    )


def test_operation_ids_make_clean_sdk_names(spec):
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", op_id) for op_id in ids), ids
    assert {"submitJob", "getJob", "listJobs", "cancelJob", "streamJobEvents", "getJobImage",
            "listLoras", "uploadLora", "deleteLora", "getModels"} <= set(ids)  # fmt: skip


def test_the_walkthrough_lora_fits_the_embedded_demo_model():
    """The upload check the gateway makes, against the layers the demo model's worker publishes:
    `make postman` against a default `gensvc up` uploads this file (tiny's: tests/clients)."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from generative_service.engine import paths
    from generative_service.engine.lora import target_layers
    from generative_service.lora_fit import check_fit

    unet = UNet2DConditionModel.from_pretrained(paths.DEMO_ROOT / "pipeline", subfolder="unet")
    with safe_open(ROOT / "openapi/loras/demo" / openapi_export.LORA_FILE, "pt") as lora:
        shapes = {key: list(lora.get_slice(key).get_shape()) for key in lora.keys()}
    assert shapes
    check_fit(shapes, target_layers(SimpleNamespace(unet=unet)), model="demo")
