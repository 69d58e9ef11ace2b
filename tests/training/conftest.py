"""Fixtures of the demo-model tests: the judge and the committed demo model loaded in the Engine."""

from __future__ import annotations

import json

import pytest

from generative_service.engine.paths import DEMO_ROOT


@pytest.fixture(scope="session")
def judge():
    from generative_service.training.evaluate import train_judge

    return train_judge()


@pytest.fixture(scope="session")
def demo_info() -> dict:
    return json.loads((DEMO_ROOT / "bundle.json").read_text())


@pytest.fixture(scope="session")
def demo_drawer(tmp_path_factory):
    """The committed demo bundle served exactly as GENSVC_MODEL=demo serves it (Engine, from_pretrained)."""
    from generative_service.training.drawing import EngineDrawer

    return EngineDrawer("demo", cache_dir=tmp_path_factory.mktemp("demo-cache"))
