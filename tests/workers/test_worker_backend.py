"""GENSVC_ENGINE_BACKEND through a real worker: named in /v1/models and in each job's record;
a backend that cannot start stops the worker at start with a message (no silent fallback)."""

from __future__ import annotations

import pytest

from workers.gpu_worker import EXIT_CONFIG


@pytest.mark.slow  # the worker exports its graphs on a fresh cache: minutes on a busy 2-core box
def test_onnxruntime_worker_names_its_backend(start_service, worker_settings) -> None:
    settings = worker_settings(engine_backend="onnxruntime")
    service = start_service(settings, workers=1)
    with service.client() as client:
        job = client.submit(prompt="a red house", steps=4, seed=7)
        done = client.wait(job.id, timeout=300)
        models = client.models()
    assert done.status == "succeeded"
    assert done.reproducibility["backend"]["name"] == "onnxruntime"
    assert done.reproducibility["backend"]["ran"] == "onnxruntime"
    assert models["source"] == "worker"
    assert models["backend"]["name"] == "onnxruntime"
    assert models["backend"]["provider"] == "CPUExecutionProvider"


def test_worker_whose_backend_cannot_start_exits_with_the_reason(
    start_service, worker_settings
) -> None:
    settings = worker_settings(engine_backend="onnxruntime", onnx_provider="cuda")
    service = start_service(settings, workers=1, gateway=False, wait=False)
    process = service.processes["worker-0"]
    assert process.wait(timeout=300) == EXIT_CONFIG
    logs = service.logs("worker-0")
    assert "GENSVC_ONNX_PROVIDER" in logs and "cuda" in logs
    assert service.live_worker_count() == 0
