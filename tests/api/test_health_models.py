"""/healthz, /readyz (Redis + a live worker for the default queue), /v1/models and the docs."""

from __future__ import annotations

import json


def test_healthz(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_a_live_worker_for_the_default_queue(api_client, settings, redis):
    response = api_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == {
        "ok": False,
        "live": 0,
        "reason": "no live GPU worker serves the default queue",
    }
    assert "no live GPU worker" in response.json()["error"]["message"]

    redis.set(f"{settings.key_prefix}:worker:w-large", json.dumps({"queues": ["large"]}), ex=30)
    assert api_client.get("/readyz").status_code == 503

    redis.set(
        f"{settings.key_prefix}:worker:w1",
        json.dumps({"worker_id": "w1", "queues": ["default"]}),
        ex=30,
    )
    ready = api_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"redis": {"ok": True}, "workers": {"ok": True, "live": 1}},
    }


def test_models_fall_back_to_settings_until_a_worker_publishes(api_client, settings, redis):
    info = api_client.get("/v1/models").json()
    assert info["source"] == "settings" and info["base_model"] == "tiny"
    assert "dpmpp_2m_karras" in info["samplers"] and info["default_size"] == 64
    assert info["limits"]["max_side"] == settings.max_side and info["loras"] == []

    published = {
        "base_model": "tiny",
        "controlnets": ["canny", "depth"],
        "samplers": ["euler"],
        "attention": "sdpa",
    }
    redis.set(f"{settings.key_prefix}:models", json.dumps(published))
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    (settings.lora_dir / "ink.safetensors").write_bytes(b"x")
    info = api_client.get("/v1/models").json()
    assert info["source"] == "worker" and info["controlnets"] == ["canny", "depth"]
    assert info["samplers"] == ["euler"] and info["attention"] == "sdpa"
    assert info["loras"] == ["ink"]  # LoRAs are read live, not from the worker's snapshot


def test_openapi_documents_routes_with_the_error_shape(api_client):
    spec = api_client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/images/{index}",
                 "/v1/jobs/{job_id}/webhooks", "/v1/models", "/v1/loras", "/v1/loras/{name}", "/healthz", "/readyz"):  # fmt: skip
        assert path in spec["paths"], path
    submit = spec["paths"]["/v1/jobs"]["post"]
    assert {"202", "200", "409", "422", "429"} <= set(submit["responses"])
    assert submit["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert "HTTPValidationError" not in json.dumps(spec)
    assert spec["components"]["schemas"]["GenerationRequest"]["examples"]
    assert api_client.get("/redoc").status_code == 200


def test_models_default_steps_is_what_a_job_without_steps_runs(api_client, settings, redis):
    # A worker on a bundle whose bundle.json says 20 published that number; jobs ran 30.
    redis.set(
        f"{settings.key_prefix}:models", json.dumps({"base_model": "tiny", "default_steps": 20})
    )
    advertised = api_client.get("/v1/models").json()["default_steps"]
    job = api_client.post("/v1/jobs", json={"prompt": "a red square"}).json()
    assert advertised == job["request"]["steps"] == job["progress"]["total_steps"]
