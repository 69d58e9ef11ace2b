"""deploy/k8s/: every manifest parses and validates against the Kubernetes and KEDA API models
(cloudcoil's pydantic models, generated from the upstream OpenAPI schemas, offline), with unknown
fields refused; the settings they set are real, and KEDA watches the queue the service fills."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from generative_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def documents() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def model_for(doc: dict) -> type[BaseModel]:
    k8s = pytest.importorskip("cloudcoil.models.kubernetes", reason="test extra cloudcoil models")
    keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1")
    import cloudcoil.models.kubernetes.apps.v1 as apps
    import cloudcoil.models.kubernetes.core.v1 as core

    assert k8s
    models = {
        ("apps/v1", "Deployment"): apps.Deployment,
        ("v1", "Service"): core.Service,
        ("v1", "ConfigMap"): core.ConfigMap,
        ("v1", "Secret"): core.Secret,
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    }
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in models, f"no schema for {key}"
    return models[key]


def unknown_fields(model: type[BaseModel], data: object, where: str = "") -> list[str]:
    """Keys of `data` that `model` (recursively) has no field for: typos the models let pass."""
    if not isinstance(data, dict):
        return []
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    problems = []
    for key, value in data.items():
        info = fields.get(key) or model.model_fields.get(key)
        if info is None:
            problems.append(f"{where}{key}")
            continue
        for inner in _models_in(info.annotation):
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                suffix = f"[{index}]" if isinstance(value, list) else ""
                problems += unknown_fields(inner, item, f"{where}{key}{suffix}.")
    return problems


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is dict:
        return []  # free-form maps (labels, data, trigger metadata)
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_there_are_manifests_for_every_part() -> None:
    kinds = {(name, doc["kind"], doc["metadata"]["name"]) for name, doc in documents()}
    assert ("gateway.yaml", "Deployment", "gensvc-gateway") in kinds
    assert ("gateway.yaml", "Service", "gensvc-gateway") in kinds
    assert ("gpu-worker.yaml", "Deployment", "gensvc-gpu-worker") in kinds
    assert ("webhook-sender.yaml", "Deployment", "gensvc-webhook-sender") in kinds
    assert ("keda-scaledobject.yaml", "ScaledObject", "gensvc-gpu-worker") in kinds


@pytest.mark.parametrize("name,doc", documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_validates_against_its_schema(name: str, doc: dict) -> None:
    model = model_for(doc)
    model.model_validate(doc)
    assert unknown_fields(model, doc) == []


def test_the_strict_check_catches_a_typo() -> None:
    name, doc = next(item for item in documents() if item[0] == "gpu-worker.yaml")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    broken = {**container, "imagee": container["image"]}
    doc = {**doc, "spec": {**doc["spec"], "template": {**doc["spec"]["template"], "spec": {
        **doc["spec"]["template"]["spec"], "containers": [broken]}}}}  # fmt: skip
    assert unknown_fields(model_for(doc), doc) == ["spec.template.spec.containers[0].imagee"]


def deployments() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == "Deployment"}


def test_settings_are_real_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    config = next(doc for _, doc in documents() if doc["kind"] == "ConfigMap")
    secret = next(doc for _, doc in documents() if doc["kind"] == "Secret")
    fields = {name.upper() for name in Settings.model_fields}
    for deployment in deployments().values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {**config["data"], **secret["stringData"]}
        env.update({item["name"]: item["value"] for item in container.get("env", [])})
        names = {key.removeprefix("GENSVC_") for key in env if key.startswith("GENSVC_")}
        assert names - fields == set()
        for key in Settings.model_fields:
            monkeypatch.delenv(f"GENSVC_{key.upper()}", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.redis_sentinels and settings.storage_url.startswith("s3://")


def test_gpu_workers_get_a_gpu_and_keda_watches_their_queue() -> None:
    worker = deployments()["gensvc-gpu-worker"]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    queue = container["args"][container["args"].index("--queues") + 1]
    config = next(doc for _, doc in documents() if doc["kind"] == "ConfigMap")["data"]
    scaled = next(doc for _, doc in documents() if doc["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-sentinel"
    settings = Settings(key_prefix=config["GENSVC_KEY_PREFIX"])
    assert trigger["metadata"]["listName"] == settings.keys.rq_queue_list(queue)
    assert trigger["metadata"]["addresses"] == config["GENSVC_REDIS_SENTINELS"]
    assert trigger["metadata"]["sentinelMaster"] == config["GENSVC_REDIS_SENTINEL_MASTER"]


def test_gateway_service_targets_the_gateway_port() -> None:
    service = next(doc for _, doc in documents() if doc["kind"] == "Service")
    gateway = deployments()["gensvc-gateway"]
    assert (
        service["spec"]["selector"].items()
        <= gateway["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
