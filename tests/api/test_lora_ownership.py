"""LoRA ownership: uploads belong to their key; shared adapters are the operator's."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from api_helpers import check_error
from safetensors.numpy import save

from generative_service.jobs import owner_for_key


def lora_bytes(fill: float) -> bytes:
    return save({
        "unet.mid_block.attentions.0.to_q.lora_A.weight": np.full((4, 32), fill, dtype=np.float32),
        "unet.mid_block.attentions.0.to_q.lora_B.weight": np.zeros((32, 4), dtype=np.float32),
    })  # fmt: skip


@pytest.fixture
def tenants(make_settings, make_api_client):
    settings = make_settings(api_keys=["key-a", "key-b"], admin_keys=["key-admin"])
    return settings, {
        who: make_api_client(settings, headers={"Authorization": f"Bearer key-{who}"})
        for who in ("a", "b", "admin")
    }


def _job(client, name: str):
    return client.post(
        "/v1/jobs", json={"prompt": "a seven", "steps": 2, "loras": [{"name": name}]}
    )


def test_another_key_cannot_see_use_replace_or_delete_an_upload(tenants):
    settings, clients = tenants
    a, b = clients["a"], clients["b"]
    mine = lora_bytes(1.0)
    created = a.post("/v1/loras/ink", content=mine)
    assert created.status_code == 201 and created.json()["scope"] == "private"

    check_error(b.get("/v1/loras/ink"), 404, "not_found", "LoRA 'ink' not found")
    check_error(b.delete("/v1/loras/ink"), 404, "not_found")
    assert b.get("/v1/loras").json()["data"] == []
    assert "ink" not in b.get("/v1/models").json()["loras"]
    check_error(_job(b, "ink"), 422, "invalid_request", "loras[0].name: unknown LoRA 'ink'")
    check_error(_job(b, f"{owner_for_key('key-a')}.ink"), 422, "invalid_request", "unknown LoRA")

    # B's own "ink" is a different adapter: no conflict, and A's jobs keep using A's weights.
    theirs = b.post("/v1/loras/ink", content=lora_bytes(2.0))
    assert theirs.status_code == 201, theirs.text
    assert a.get("/v1/loras/ink").json()["sha256"] == hashlib.sha256(mine).hexdigest()
    job_a, job_b = _job(a, "ink").json(), _job(b, "ink").json()
    assert job_a["request"]["loras"][0]["name"] == f"{owner_for_key('key-a')}.ink"
    assert job_b["request"]["loras"][0]["name"] == f"{owner_for_key('key-b')}.ink"
    assert [item["name"] for item in a.get("/v1/loras").json()["data"]] == ["ink"]
    assert a.delete("/v1/loras/ink").status_code == 204
    assert b.get("/v1/loras/ink").json()["sha256"] == theirs.json()["sha256"]


def test_shared_adapters_are_seen_by_all_and_changed_only_by_admins(tenants):
    settings, clients = tenants
    a, admin = clients["a"], clients["admin"]
    shared = admin.post("/v1/loras/house-style", content=lora_bytes(0.5))
    assert shared.status_code == 201 and shared.json()["scope"] == "shared"
    (settings.lora_dir / "operator.safetensors").write_bytes(lora_bytes(0.25))  # the LoRA directory

    listing = {item["name"]: item["scope"] for item in a.get("/v1/loras").json()["data"]}
    assert listing == {"house-style": "shared", "operator": "shared"}
    assert _job(a, "house-style").status_code == 202 and _job(a, "operator").status_code == 202
    check_error(a.delete("/v1/loras/house-style"), 403, "forbidden", "only admin keys")
    check_error(a.delete("/v1/loras/operator"), 403, "forbidden")
    check_error(admin.post("/v1/loras/house-style", content=lora_bytes(0.1)), 409, "conflict")
    assert admin.delete("/v1/loras/operator").status_code == 204
    assert [item["name"] for item in a.get("/v1/loras").json()["data"]] == ["house-style"]


def test_private_name_shape_is_reserved(tenants):
    _, clients = tenants
    name = f"{owner_for_key('key-b')}.ink"
    check_error(clients["admin"].post(f"/v1/loras/{name}", content=lora_bytes(1.0)), 422,
                "invalid_request", "are reserved")  # fmt: skip


def test_client_api_listings_show_only_the_callers_adapters(tenants):
    """The OpenAI (/openai/v1) and A1111 (/sdapi/v1) listings show shared + own, never another
    key's private names (nor the stored `key_<hash>.NAME` form)."""
    _, clients = tenants
    a, b, admin = clients["a"], clients["b"], clients["admin"]
    assert a.post("/v1/loras/a-secret", content=lora_bytes(1.0)).status_code == 201
    assert b.post("/v1/loras/b-own", content=lora_bytes(2.0)).status_code == 201
    assert admin.post("/v1/loras/house", content=lora_bytes(0.5)).status_code == 201

    def sdapi_names(client) -> list[str]:
        response = client.get("/sdapi/v1/loras")
        assert response.status_code == 200, response.text
        return sorted(item["name"] for item in response.json())

    assert sdapi_names(a) == ["a-secret", "house"]
    assert sdapi_names(b) == ["b-own", "house"]
    assert [item["path"] for item in b.get("/sdapi/v1/loras").json()] == [
        "b-own.safetensors",
        "house.safetensors",
    ]
    for path in ("/sdapi/v1/loras", "/sdapi/v1/sd-models", "/openai/v1/models", "/v1/loras"):
        answer = b.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert "a-secret" not in answer.text and owner_for_key("key-a") not in answer.text, path
