"""The gateway never imports torch (nor diffusers/transformers/onnxruntime): checked in a fresh
interpreter after creating the app and serving every kind of request."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import base64, io, sys
    from fastapi.testclient import TestClient
    from PIL import Image
    import generative_service.cli, generative_service.client
    from generative_service.api import create_app
    from generative_service.settings import Settings

    buffer = io.BytesIO(); Image.new("L", (64, 64)).save(buffer, format="PNG")
    control = {"type": "canny", "image": base64.b64encode(buffer.getvalue()).decode()}
    with TestClient(create_app(Settings())) as client:
        job = client.post("/v1/jobs", json={"prompt": "a seven", "control": control, "loras": []}).json()
        client.post("/v1/jobs", json={"prompt": "", "width": 65})
        client.get(f"/v1/jobs/{job['id']}"); client.get("/v1/jobs")
        client.post(f"/v1/jobs/{job['id']}/cancel")
        client.get(f"/v1/jobs/{job['id']}/events"); client.get(f"/v1/jobs/{job['id']}/images/0")
        client.get(f"/v1/jobs/{job['id']}/webhooks")
        client.get("/v1/models"); client.get("/v1/loras"); client.delete("/v1/loras/x")
        client.get("/readyz"); client.get("/openapi.json"); client.get("/nope")
    heavy = sorted(name for name in ("torch", "torchvision", "diffusers", "transformers", "onnxruntime", "spandrel") if name in sys.modules)
    print("HEAVY", heavy)
    sys.exit(1 if heavy else 0)
    """
)


def test_gateway_does_not_import_torch(settings, process_env):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=process_env(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "HEAVY []" in result.stdout
