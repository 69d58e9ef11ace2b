"""`gensvc` as a person at a terminal sees it: GENSVC_URL, a refused connection, --version, the
progress display on a terminal and off one."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
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


def _job_events() -> list:
    from generative_service.schemas import Event

    job = "job_0123456789abcdef01234567"
    events = [Event(type="queued", job_id=job, position=1), Event(type="started", job_id=job)]
    events += [Event(type="progress", job_id=job, step=step, total_steps=4) for step in range(1, 5)]
    events += [
        Event(type="stage", job_id=job, stage="safety"),
        Event(type="stage", job_id=job, stage="storing"),
    ]
    return [*events, Event(type="succeeded", job_id=job)]


def test_progress_off_a_terminal_prints_each_state_once():
    import io

    from generative_service.cli.progress import ProgressDisplay

    out = io.StringIO()
    display = ProgressDisplay(out)
    for event in _job_events():
        display.update(event)
    display.close()
    assert out.getvalue().splitlines() == [
        "queued (position 1)", "running", "denoising (4 steps)", "safety", "storing", "succeeded"
    ]  # fmt: skip
    assert "\r" not in out.getvalue()


@pytest.mark.parametrize(("rows", "columns"), [(0, 0), (24, 60)])  # 0x0: a pty nobody sized
def test_progress_on_a_terminal_is_one_bar_redrawn_in_place(rows, columns, monkeypatch):
    import fcntl
    import pty
    import struct
    import termios

    from generative_service.cli.progress import ProgressDisplay

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)  # tqdm sizes its bar only on sys.stderr/stdout
        display = ProgressDisplay()
        for event in _job_events():
            display.update(event)
        display.close()
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed and everything is read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    drawn = b"".join(chunks).decode().replace("\r\n", "\n")  # the tty turns \n into \r\n
    # Redrawn with carriage returns on one line, ended by one newline when the job ends.
    assert drawn.count("\n") == 1 and drawn.count("\r") >= len(_job_events())
    last_frame = drawn.rstrip("\r\n").split("\r")[-1]
    assert last_frame.startswith("succeeded: 100%") and "4/4" in last_frame
    assert len(last_frame) <= (columns or 80)
