"""The one-shot device check runs its code paths on the CPU (`gpu_check.py --smoke`), as CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # CI runs the same command from .ci/run (`make gpu-check-smoke`)
@pytest.mark.timeout(1500)
def test_gpu_check_smoke_measures_every_part(tmp_path, redis_url):
    out = tmp_path / "section.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GENSVC_REDIS_URL": redis_url}
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--smoke",
            "--no-report",
            "--budget-s",
            "1200",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = out.read_text()
    assert "| eager |" in text and "| onnxruntime |" in text
    for part in ("VAE decode alone", "LoRA: first load", "Real-ESRGAN x4", "Through the API"):
        assert part in text, f"{part!r} missing from:\n{text}"
    assert "Skipped" not in text, text
