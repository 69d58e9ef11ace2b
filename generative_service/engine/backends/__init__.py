"""Engine backends (GENSVC_ENGINE_BACKEND): how the UNet, ControlNets and VAE decoder run.

- `eager`: PyTorch as loaded (the default).
- `onnxruntime`: graphs exported once per model and LoRA set, run by ONNX Runtime
  (CPU, CUDA or TensorRT execution provider).
- `compile`: `torch.compile` of the UNet, LoRA hot-swap prepared first, every served shape
  compiled at start.

`start_backend` is the one place that picks one. A backend that cannot start raises
ModelLoadError at worker start; there is no silent fallback to another backend.
"""

from __future__ import annotations

from generative_service.engine.backends.base import Backend

BACKENDS = ("eager", "compile", "onnxruntime")


def start_backend(settings, models) -> Backend:
    """The backend GENSVC_ENGINE_BACKEND names, ready to serve `models`.

    Raises:
        ModelLoadError: the backend cannot run here (e.g. no CUDA execution provider).
    """
    if settings.engine_backend == "onnxruntime":
        from generative_service.engine.backends.ort import OrtBackend

        return OrtBackend(settings, models)
    if settings.engine_backend == "compile":
        from generative_service.engine.backends.compiled import CompiledBackend

        return CompiledBackend(settings, models)
    return Backend(settings, models)


__all__ = ["BACKENDS", "Backend", "start_backend"]
