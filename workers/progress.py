"""Progress reporting off the denoising loop: a background thread writes step events to Redis.

The engine calls `on_step` once per job per step. Writing each event (a record update plus an
XADD) inline would put Redis round trips between GPU steps; instead the events go, in order, to
a publisher thread. `flush()` waits until everything queued so far is written, so a job's
terminal event always follows its progress events. A Redis error drops that one update (progress
is informative; the terminal state is written with retries elsewhere).

`PendingSteps` gathers the steps between two writes: on a model that steps every few
milliseconds, a write per step kept the publisher thread waking (and taking the GIL from the
denoising loop) several times per step; now it writes every step's event, a few steps at a time.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from generative_service.logs import get_logger

if TYPE_CHECKING:
    from PIL.Image import Image

log = get_logger(__name__)

PROGRESS_EVERY_S = 0.05  # at most this often a write of the steps gathered since the last one

Report = TypeVar("Report")


class ProgressPublisher:
    """Runs submitted callables in order on one daemon thread."""

    def __init__(self) -> None:
        self._items: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="progress-publisher", daemon=True)
        self._thread.start()

    def submit(self, item: Callable[[], object]) -> None:
        """Queue `item` to run after everything submitted before it."""
        self._items.put(item)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every submitted item ran (or `timeout_s` passed)."""
        done = threading.Event()
        self._items.put(done.set)
        done.wait(timeout_s)

    def close(self) -> None:
        self._items.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is None:
                return
            try:
                item()
            except Exception as exc:  # noqa: BLE001 - a lost progress update must not stop the rest
                log.warning("progress.publish_failed", extra={"error": repr(exc)})


class PendingSteps(Generic[Report]):
    """Step reports (and the batch's step times) gathered in the denoising loop, written by the
    publisher together: at most every `every_s`, at once for a job's last step, and whenever
    `submit()` is called (before a cancel's terminal write, after the pipeline call).
    `write(reports, step_times_ms)` runs on the publisher thread."""

    def __init__(
        self,
        publisher: ProgressPublisher,
        write: Callable[[list[Report], list[float]], None],
        *,
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.publisher = publisher
        self.write = write
        self.every_s = every_s
        self._lock = threading.Lock()
        self._reports: list[Report] = []
        self._times: list[float] = []
        self._submitted_at = float("-inf")

    def add(self, report: Report, step_ms: float | None = None, *, last: bool = False) -> None:
        with self._lock:
            self._reports.append(report)
            if step_ms is not None:
                self._times.append(step_ms)
        now = time.monotonic()
        if last or now - self._submitted_at >= self.every_s:
            self._submitted_at = now
            self.submit()

    def submit(self) -> None:
        """Have the publisher write what is gathered by the time its turn comes."""
        self.publisher.submit(self._write)

    def _write(self) -> None:
        with self._lock:
            reports, self._reports = self._reports, []
            times, self._times = self._times, []
        if reports or times:
            self.write(reports, times)


def preview_data_url(image: Image, max_px: int) -> str:
    """A small JPEG data URL of `image`, its longer side at most `max_px` (never enlarged)."""
    preview = image.convert("RGB")
    if max(preview.size) > max_px:
        preview.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
