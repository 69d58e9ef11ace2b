"""The compile backend's tests again, with inductor (the service's compiler) instead of tracing only.

Inductor can add guards of its own while it compiles, so "no recompile in service" is checked
with it too. Its C++ build of the tiny UNet takes many minutes on a shared 2-core machine: slow.
"""

from __future__ import annotations

import pytest
import torch

from .test_backend_compile import (  # noqa: F401 - the same tests, collected here with inductor
    no_recompiles,
    start_compiled,
    test_batches_cfg_loras_control_and_long_prompts_never_recompile,
    test_lora_off_is_the_base_model_and_batches_equal_solo,
    test_sizes_outside_the_compiled_set_run_eagerly,
    test_too_many_adapters_are_refused_and_models_names_the_backend,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def compiled_engine(make_engine_settings):
    yield start_compiled(make_engine_settings, compile_compiler="inductor")
    torch._dynamo.reset()
