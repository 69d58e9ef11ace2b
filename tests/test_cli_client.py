"""`gensvc` as a person at a terminal sees it: GENSVC_URL, a refused connection, --version."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from support import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def gensvc(*argv: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GENSVC_")}
    environ.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "generative_service.cli", *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=environ,
    )  # fmt: skip


def test_refused_connection_is_one_line_naming_gensvc_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = gensvc("generate", "a red square", "--out", str(tmp_path / "x.png"), GENSVC_URL=url)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith(f"error: cannot reach the service at {url} (ConnectError)")
    assert "GENSVC_URL" in done.stderr and "Traceback" not in done.stderr


def test_version():
    done = gensvc("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"gensvc {metadata.version('generative-service')}"


def test_control_type_choices_come_from_the_server():
    from generative_service.cli.generate import _check_control_type

    class Server:
        def models(self) -> dict:
            return {"controlnets": ["canny"]}

    assert _check_control_type(Server(), {"control": {"type": "canny"}}) is None
    assert _check_control_type(Server(), {"control": {"type": "depth"}}) == (
        "--control-type depth is not served here; choose from: canny"
    )
    assert _check_control_type(Server(), {}) is None
