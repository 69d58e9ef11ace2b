"""Fixtures for post-processing tests: converted x4plus weights (once per session), a loaded
upscaler and the NSFW filter. Inputs stay small (<= 64 px) because RRDBNet is slow on CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from generative_service.postprocess.convert import ensure_converted
from generative_service.postprocess.safety import SafetyFilter
from generative_service.postprocess.upscaler import Upscaler
from generative_service.settings import Settings


@pytest.fixture(scope="session")
def pp_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the x4plus weights converted from the bundled ncnn files."""
    cache = tmp_path_factory.mktemp("pp_cache")
    ensure_converted(cache)
    return cache


@pytest.fixture(scope="session")
def x4_weights(pp_cache: Path) -> Path:
    return ensure_converted(pp_cache)


@pytest.fixture(scope="session")
def upscaler(pp_cache: Path) -> Upscaler:
    """The upscaler on the converted weights, untiled (tests set `.tile` where they need it)."""
    return Upscaler.from_settings(Settings(cache_dir=pp_cache, upscale_tile=0, device="cpu")).load()


@pytest.fixture(scope="session")
def make_filter() -> Callable[..., SafetyFilter]:
    """Build SafetyFilters that share one loaded open_nsfw session (loading takes ~1 s)."""
    base = SafetyFilter.from_settings(Settings(device="cpu"))

    def build(**overrides: object) -> SafetyFilter:
        settings = Settings(device="cpu", **overrides)
        return SafetyFilter(
            classifier=base.classifier,
            detector=None,
            threshold=settings.nsfw_threshold,
            policy=settings.safety_policy,
        )

    return build
