"""docker-compose.yml and Dockerfile.gpu, checked without Docker (it cannot run on dev machines).

- the compose file is valid against the Compose Specification schema (vendored in schema/);
- every GENSVC_* variable it sets is a Settings field, and each service's environment builds a
  valid Settings (so a typo or a bad value fails here, not at `docker compose up`);
- the deployment shape the issue asks for (Redis persistence, GPU pinning, routing, health checks);
- the images install the package with the Makefile's `install` target, the one CI runs.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from generative_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(__file__).parent / "schema" / "compose-spec.json").read_text())
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+]([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def interpolate(value: str) -> str:
    """Resolve `${VAR:-default}` the way compose does with VAR unset."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def gpu_workers(compose: dict) -> dict[str, dict]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    }


# --- schema ----------------------------------------------------------------------------------------
def test_compose_file_is_valid_against_the_compose_spec(compose):
    assert schema_errors(compose) == []


def test_schema_check_rejects_a_broken_file(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["restart"] = {"always": True}
    broken["services"]["worker-small"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] = "0"
    broken["services"]["redis"]["helthcheck"] = {}
    errors = " | ".join(schema_errors(broken))
    assert "services/gateway/restart" in errors
    assert "device_ids" in errors
    assert "helthcheck" in errors


# --- settings names and values ---------------------------------------------------------------------
def test_every_gensvc_variable_is_a_settings_field(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"\bGENSVC_([A-Z0-9_]+)", text))
    fields = {name.upper() for name in Settings.model_fields}
    assert names, "compose sets no GENSVC_ variable"
    assert sorted(names - fields) == []


def test_each_service_environment_builds_valid_settings(compose, monkeypatch):
    checked = 0
    for name, service in compose["services"].items():
        env = {
            key: value for key, value in service_env(service).items() if key.startswith("GENSVC_")
        }
        if not env:
            continue
        for key in Settings.model_fields:
            monkeypatch.delenv(f"GENSVC_{key.upper()}", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.redis_url.startswith("redis://redis:"), name
        checked += 1
    assert checked >= 4


# --- deployment shape --------------------------------------------------------------------------
def test_redis_persists_the_queue(compose):
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert redis["volumes"][0].split(":")[0] in compose["volumes"]


def test_two_gpu_workers_pinned_to_different_gpus_and_queues(compose):
    workers = gpu_workers(compose)
    assert len(workers) >= 2
    devices, queue_sets = [], []
    for service in workers.values():
        device = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        devices.append(tuple(device["device_ids"]))
        queue_sets.append(Settings(queues=service_env(service)["GENSVC_QUEUES"]).queues)
    assert len(set(devices)) == len(devices), "two workers share a GPU"
    assert len({tuple(q) for q in queue_sets}) == len(queue_sets), "workers serve the same queues"


def test_every_routed_queue_has_a_worker(compose):
    gateway = Settings(
        queue_routes=service_env(compose["services"]["gateway"])["GENSVC_QUEUE_ROUTES"]
    )
    served = {
        queue
        for service in gpu_workers(compose).values()
        for queue in Settings(queues=service_env(service)["GENSVC_QUEUES"]).queues
    }
    routed = {rule.partition(":")[0] for rule in gateway.queue_routes} | {"default"}
    assert routed <= served, f"no worker serves {routed - served}"
    # The largest size accepted must route to a served queue, not fall through to nobody.
    assert gateway.queue_for_pixels(gateway.max_side**2) in served


def test_services_restart_and_report_health(compose):
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    for name, service in compose["services"].items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        has_check = "healthcheck" in service or (
            name in gpu_workers(compose) and "HEALTHCHECK" in dockerfile
        )
        assert has_check, f"{name} has no health check"


def test_images_and_models_are_shared_volumes(compose):
    workers = gpu_workers(compose)
    for name in [*workers, "gateway"]:
        mounts = {
            str(v).split(":")[0]: str(v).split(":")[1] for v in compose["services"][name]["volumes"]
        }
        assert mounts.get("images") == "/data/images", name
        assert mounts.get("models") == "/data/models", name
        assert service_env(compose["services"][name])["GENSVC_STORAGE_DIR"] == "/data/images"


# --- one install path ------------------------------------------------------------------------------
def dockerfile_runs() -> list[str]:
    text = (ROOT / "Dockerfile.gpu").read_text().replace("\\\n", " ")
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


def test_dockerfile_installs_with_the_makefile_target():
    installs = [
        run
        for run in dockerfile_runs()
        if "install" in run and "apt-get" not in run and "useradd" not in run
    ]
    assert len(installs) == 2, installs
    for run in installs:
        assert "pip install" not in run, (
            "install the package through `make install`, not pip directly"
        )
        assert re.search(r"\bmake install\b", run), run
    assert any("EXTRAS=gpu" in run for run in installs)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: install\b", makefile, re.M), (
        "CI's `make test` no longer installs through `install`"
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_xformers_only_in_the_gpu_extra_and_torch_pinned():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("xformers") for dep in project["dependencies"])
    assert any(dep.startswith("xformers") for dep in project["optional-dependencies"]["gpu"])
    assert "torch==2.14.1" in project["dependencies"]
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM \S+ AS cpu$", dockerfile, re.M), "no `--target cpu` stage"
    assert re.search(r'^ENTRYPOINT \["python", "-m", "workers.gpu_worker"\]', dockerfile, re.M)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)


def test_every_command_names_a_real_entry_point(compose):
    """`python -m X` modules exist, `gensvc ...` parses: a renamed module breaks this, not production."""
    import importlib.util

    from generative_service.cli import build_parser

    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    commands = [
        json.loads(m) for m in re.findall(r"^(?:CMD|ENTRYPOINT|\s+CMD) (\[.*\])$", dockerfile, re.M)
    ]
    for service in compose["services"].values():
        for key in ("command", "entrypoint"):
            if isinstance(service.get(key), list):
                commands.append(service[key])
        test = service.get("healthcheck", {}).get("test")
        if isinstance(test, list) and test[0] == "CMD":
            commands.append(test[1:])
    modules = [argv[argv.index("-m") + 1] for argv in commands if argv[0] == "python"]
    assert {
        "workers.gpu_worker",
        "workers.webhook_worker",
        "generative_service.healthcheck",
    } <= set(modules)
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    for argv in commands:
        if argv[0] == "gensvc":
            build_parser().parse_args(argv[1:])
