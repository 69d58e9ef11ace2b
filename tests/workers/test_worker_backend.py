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


def stopped_at_start(start_service, settings, *, timeout: float = 300) -> str:
    """Start one worker that must exit with EXIT_CONFIG without ever registering; its log."""
    service = start_service(settings, workers=1, gateway=False, wait=False)
    assert service.processes["worker-0"].wait(timeout=timeout) == EXIT_CONFIG
    assert service.live_worker_count() == 0
    return service.logs("worker-0")


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_worker_whose_backend_cannot_start_exits_with_the_reason(
    start_service, worker_settings
) -> None:
    settings = worker_settings(engine_backend="onnxruntime", onnx_provider="cuda")
    logs = stopped_at_start(start_service, settings)
    assert "GENSVC_ONNX_PROVIDER" in logs and "cuda" in logs


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_compile_worker_with_a_bad_size_list_exits_with_the_reason(
    start_service, worker_settings
) -> None:
    settings = worker_settings(engine_backend="compile", compile_sizes="64x64,64")
    logs = stopped_at_start(start_service, settings)
    assert "GENSVC_COMPILE_SIZES" in logs and "'64' is not WIDTHxHEIGHT" in logs


@pytest.mark.slow  # traces the UNet before inductor's C++ build fails
def test_compile_worker_without_a_cpp_compiler_exits_with_the_reason(
    start_service, worker_settings, monkeypatch
) -> None:
    monkeypatch.setenv("CXX", "/bin/false")  # inductor's C++ build cannot run
    monkeypatch.setenv("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")  # no cached kernels to fall back on
    logs = stopped_at_start(start_service, worker_settings(engine_backend="compile"), timeout=1800)
    assert "GENSVC_ENGINE_BACKEND" in logs and "torch.compile (inductor) failed at start" in logs
