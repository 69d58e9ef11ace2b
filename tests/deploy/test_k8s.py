"""deploy/k8s/: every manifest parses and validates against the Kubernetes and KEDA API models
(cloudcoil's pydantic models, generated from the upstream OpenAPI schemas, offline), with unknown
fields refused; the settings they set are real, and KEDA watches the queue the service fills."""

from __future__ import annotations

import re
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


KEDA_QUERY = re.compile(r'^max\((?P<metric>\w+)\{queue="(?P<queue>[\w.-]+)"\}\)$')


def keda_trigger() -> dict:
    scaled = next(doc for _, doc in documents() if doc["kind"] == "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    return trigger


def keda_reads(exposition: str, query: str) -> float:
    """What Prometheus answers KEDA's `max(METRIC{queue="Q"})` with, scraping this exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    match = KEDA_QUERY.match(query)
    assert match, f"the test evaluates max(METRIC{{queue=...}}) only, got {query!r}"
    values = [
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == match["metric"] and sample.labels.get("queue") == match["queue"]
    ]
    assert values, f"{match['metric']}{{queue={match['queue']!r}}} is not in /metrics"
    return max(values)


def test_gpu_workers_get_a_gpu_and_keda_watches_their_queue() -> None:
    worker = deployments()["gensvc-gpu-worker"]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    queue = container["args"][container["args"].index("--queues") + 1]
    scaled = next(doc for _, doc in documents() if doc["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    trigger = keda_trigger()
    assert trigger["type"] == "prometheus"
    match = KEDA_QUERY.match(trigger["metadata"]["query"])
    assert match and match["metric"] == "gensvc_queue_depth" and match["queue"] == queue
    float(trigger["metadata"]["threshold"])
    pod = deployments()["gensvc-gateway"]["spec"]["template"]
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def test_keda_reads_every_tenants_waiting_jobs(make_settings, make_api_client, redis) -> None:
    """With API keys each key's jobs wait in their own RQ list; the number the ScaledObject's
    query reads off /metrics is all of them (the old trigger's one list held none)."""
    settings = make_settings(api_keys=["key-a", "key-b"])
    clients = {
        who: make_api_client(settings, headers={"Authorization": f"Bearer key-{who}"})
        for who in ("a", "b")
    }
    job = {"prompt": "a seven", "steps": 2, "width": 64, "height": 64}
    ids = [clients["a"].post("/v1/jobs", json=job).json()["id"] for _ in range(3)]
    ids += [clients["b"].post("/v1/jobs", json=job).json()["id"] for _ in range(2)]
    query = keda_trigger()["metadata"]["query"]

    def keda_value() -> float:
        response = clients["a"].get("/metrics")
        assert response.status_code == 200
        return keda_reads(response.text, query)

    assert keda_value() == 5
    assert redis.llen(settings.keys.rq_queue_list("default")) == 0  # what KEDA used to watch
    assert clients["b"].post(f"/v1/jobs/{ids[-1]}/cancel").status_code in (200, 202)
    assert keda_value() == 4


def test_gateway_service_targets_the_gateway_port() -> None:
    service = next(doc for _, doc in documents() if doc["kind"] == "Service")
    gateway = deployments()["gensvc-gateway"]
    assert (
        service["spec"]["selector"].items()
        <= gateway["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
