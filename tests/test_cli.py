"""`gensvc`: argument parsing, exec of workers, the supervisor (restart, stop), `generate` against
a real gateway process, and `up` starting and stopping its children."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from services import wait_for_health
from support import free_port, process_alive

from generative_service import cli
from generative_service.cli.generate import request_from_args
from generative_service.cli.supervisor import Child, Supervisor, child_env, service_children
from generative_service.jobs import JobStore
from generative_service.schemas import BatchInfo, ImageInfo, Timings
from generative_service.storage import LocalStorage, encode_image, image_url

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_generate_options_become_the_request(tmp_path):
    control = tmp_path / "edges.png"
    Image.new("L", (64, 64), 255).save(control)
    args = cli.build_parser().parse_args(
        [
            "generate",
            "a seven",
            "--out",
            "x.png",
            "--steps",
            "12",
            "--seed",
            "3",
            "--guidance",
            "4.5",
            "--size",
            "64x128",
            "--num-images",
            "2",
            "--lora",
            "ink:0.5",
            "--lora",
            "chalk",
            "--control-type",
            "canny",
            "--control-image",
            str(control),
            "--upscale",
            "2",
        ]  # fmt: skip
    )
    body = request_from_args(args)
    assert (
        body["prompt"] == "a seven"
        and body["steps"] == 12
        and body["seed"] == 3
        and body["guidance_scale"] == 4.5
    )
    assert (
        (body["width"], body["height"]) == (64, 128)
        and body["num_images"] == 2
        and body["upscale"] == 2
    )
    assert body["loras"] == [{"name": "ink", "scale": 0.5}, {"name": "chalk", "scale": 1.0}]
    assert body["control"]["type"] == "canny"
    assert base64.b64decode(body["control"]["image"].split(",", 1)[1]) == control.read_bytes()
    assert (
        "negative_prompt" not in body and "sampler" not in body
    )  # unset options are the server's call


@pytest.mark.parametrize(
    "bad", [["--size", "64"], ["--size", "axb"], ["--lora", "ink:strong"], ["--upscale", "3"]]
)
def test_bad_generate_options_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["generate", "x", "--out", "x.png", *bad])
    assert caught.value.code == 2


def test_worker_commands_exec_the_worker_modules_offline(monkeypatch):
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    cli.main(["worker", "--queues", "small,large", "--burst"])
    cli.main(["webhook-worker"])
    assert calls == [
        [sys.executable, "-m", "workers.gpu_worker", "--queues", "small,large", "--burst"],
        [sys.executable, "-m", "workers.webhook_worker"],
    ]
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_children_run_offline_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert child_env()["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert child_env()["HF_HUB_OFFLINE"] == "0"
    names = [child.name for child in service_children(host="127.0.0.1", port=8001, workers=2)]
    assert names == ["gateway", "gpu-worker-0", "gpu-worker-1", "webhook-worker"]


def test_supervisor_restarts_a_dead_child_and_stops_all():
    sleeper = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
    crasher = Child("crasher", [sys.executable, "-c", "import sys; sys.exit(3)"])
    lines: list[str] = []
    supervisor = Supervisor([sleeper, crasher], log=lines.append, stop_timeout_s=10)
    supervisor.start()
    try:
        deadline = time.monotonic() + 30
        while crasher.restarts < 2 and time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.1)
        assert crasher.restarts >= 2
        assert any("crasher exited with code 3; restarting" in line for line in lines)
        assert sleeper.process.poll() is None and sleeper.restarts == 0
    finally:
        supervisor.stop()
    assert sleeper.process.poll() is not None and crasher.process.poll() is not None


def _complete_first_job(redis, settings, stop: threading.Event) -> None:
    """Play the GPU worker for the first job that shows up."""
    store, storage = JobStore(redis, settings), LocalStorage(settings.storage_dir)
    while not stop.is_set():
        jobs, _ = store.list(owner="anonymous")
        if jobs:
            job = jobs[0]
            store.queue.rq_queue(job.queue).remove(job.id)
            store.mark_started(job.id, batch=BatchInfo(id="b", size=1), worker_id="fake")
            for step in range(1, job.request.steps + 1):
                store.report_progress(job.id, step, job.request.steps)
            data, content_type = encode_image(
                Image.new("RGB", (job.request.width, job.request.height), "white"), "png"
            )
            storage.put(job.id, 0, data, content_type)
            info = ImageInfo(
                index=0,
                url=image_url(job.id, 0),
                width=job.request.width,
                height=job.request.height,
                seed=job.request.seed,
                content_type=content_type,
            )
            store.mark_succeeded(job.id, images=[info], timings=Timings())
            return
        time.sleep(0.05)


def test_generate_saves_the_image(start_service, settings, redis, tmp_path, process_env):
    gateway = start_service(settings, workers=0)
    stop = threading.Event()
    worker = threading.Thread(target=_complete_first_job, args=(redis, settings, stop))
    worker.start()
    out = tmp_path / "seven.png"
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "generative_service.cli",
                "generate",
                "a red circle above a blue square",
                "--steps",
                "3",
                "--seed",
                "5",
                "--size",
                "64x64",
                "--out",
                str(out),
                "--url",
                gateway.base_url,
            ],  # fmt: skip
            env=process_env(settings),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop.set()
        worker.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert Image.open(out).size == (64, 64)
    assert "(seed 5)" in result.stderr
    # Off a terminal: one line per state, each once (tqdm wrote a \r-frame per refresh).
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and len(lines) == len(set(lines)), result.stderr
    assert "denoising (3 steps)" in lines and lines[-1] == "succeeded"


def test_generate_control_type_choices_are_the_servers(
    start_service, settings, redis, tmp_path, process_env
):
    gateway = start_service(settings, workers=0)
    control = tmp_path / "edges.png"
    Image.new("L", (64, 64), 255).save(control)

    def generate_with(control_type: str) -> subprocess.CompletedProcess:
        argv = ["generate", "x", "--out", str(tmp_path / "x.png"), "--url", gateway.base_url,
                "--control-type", control_type, "--control-image", str(control)]  # fmt: skip
        return subprocess.run([sys.executable, "-m", "generative_service.cli", *argv], env=process_env(settings),
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip

    # What a worker serving no ControlNet publishes at start (the session's tiny bundle may have
    # gained ControlNets from other tests, so the answer must not depend on it).
    redis.set(settings.keys.models, json.dumps({"controlnets": []}))
    refused = generate_with("canny")
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        == "error: --control-type canny is not served here; choose from: none"
    )
    # What a worker serving a depth ControlNet publishes at start.
    redis.set(settings.keys.models, json.dumps({"controlnets": ["depth"]}))
    refused = generate_with("canny")
    assert (
        refused.stderr.strip()
        == "error: --control-type canny is not served here; choose from: depth"
    )
    assert not list(redis.scan_iter(match=f"{settings.key_prefix}:job:*"))  # nothing was submitted


def test_generate_reports_a_rejected_request(start_service, settings, tmp_path, process_env):
    gateway = start_service(settings, workers=0)
    result = subprocess.run(
        [sys.executable, "-m", "generative_service.cli", "generate", "x", "--size", "65x64", "--out", str(tmp_path / "x.png"), "--url", gateway.base_url],
        env=process_env(settings), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "error: width: must be a multiple of 8, got 65" in result.stderr


def test_up_starts_the_gateway_and_stops_everything_on_sigterm(settings, process_env, tmp_path):
    port = free_port()
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "generative_service.cli", "up", "--port", str(port), "--workers", "0"],
                          env=process_env(settings), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_health(f"http://127.0.0.1:{port}", up, (tmp_path / "up.log").read_text, 60)
        pids = [
            int(line.split("pid ")[1].rstrip(")"))
            for line in (tmp_path / "up.log").read_text().splitlines()
            if line.startswith("started ")
        ]
        assert len(pids) == 2  # gateway + webhook worker
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if up.poll() is None:
            up.kill()
        log.close()


@pytest.mark.slow
def test_demo_runs_everything_and_writes_the_image(settings, process_env, tmp_path, redis):
    """`gensvc demo` on the tiny model: gateway + worker + webhook worker, one image, all stopped.
    Its terminal shows its own lines and the progress; the children's logs go to the log file."""
    out, logs = tmp_path / "demo.png", tmp_path / "demo.log"  # the default log file: OUT with .log
    result = subprocess.run(
        [sys.executable, "-m", "generative_service.cli", "demo", "--out", str(out), "--steps", "3"],
        env=process_env(settings), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert Image.open(out).size == (64, 64) and result.stdout.strip() == str(out)
    lines = result.stderr.splitlines()
    assert lines[0] == f"gensvc demo: the service's logs go to {logs}"
    assert not [line for line in lines if line.startswith("{")], result.stderr  # no JSON log here
    assert "\r" not in result.stderr and len(lines) == len(set(lines))  # each state once
    assert "denoising (3 steps)" in lines and lines[-1] == "succeeded"
    records = [json.loads(line) for line in logs.read_text().splitlines()]
    assert {"gateway", "gpu-worker"} <= {record.get("component") for record in records}
    assert records[-1]["event"] == "stopped gateway, gpu-worker-0, webhook-worker"
    # Its job ran under the demo's own key prefix, never on the configured deployment's queues.
    assert not list(redis.scan_iter(match=f"{settings.key_prefix}:job:*"))


@pytest.mark.parametrize("command", ["up", "demo"])
def test_up_and_demo_on_a_busy_port_fail_at_once_saying_so(
    command, settings, process_env, tmp_path
):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "generative_service.cli", command, "--port", str(port)]
        if command == "up":
            argv += ["--host", "127.0.0.1"]
        else:
            argv += ["--out", str(tmp_path / "x.png")]
        done = subprocess.run(
            argv, env=process_env(settings), capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "gensvc up: http" not in done.stderr  # no banner for a service that is not there
    assert not (tmp_path / "x.png").exists()


def test_supervisor_stops_the_whole_process_group_of_a_killed_child(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # A child that starts a grandchild (as the webhook worker starts its RQ scheduler).
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    supervisor = Supervisor([Child("parent", [sys.executable, "-c", script])], env=child_env())
    supervisor.start()
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started its grandchild"
            time.sleep(0.1)
        grandchild = int(pid_file.read_text())
        os.kill(supervisor.children[0].process.pid, signal.SIGKILL)
        supervisor.children[0].process.wait()
        supervisor.check()  # notices the death: the group goes before the restart
        deadline = time.monotonic() + 10
        while process_alive(grandchild):
            assert time.monotonic() < deadline, "the grandchild was left behind as an orphan"
            time.sleep(0.1)
    finally:
        supervisor.stop()
