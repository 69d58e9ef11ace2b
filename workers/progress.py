"""Progress reporting off the denoising loop: a background thread writes step events to Redis.

The engine calls `on_step` once per job per step. Writing each event (a record update plus an
XADD) inline would put Redis round trips between GPU steps; instead the events go, in order, to
a publisher thread. `flush()` waits until everything queued so far is written, so a job's
terminal event always follows its progress events. A Redis error drops that one update (progress
is informative; the terminal state is written with retries elsewhere).
"""

from __future__ import annotations

import base64
import io
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from generative_service.logs import get_logger

if TYPE_CHECKING:
    from PIL.Image import Image

log = get_logger(__name__)


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


def preview_data_url(image: Image, max_px: int) -> str:
    """A small JPEG data URL of `image`, its longer side at most `max_px` (never enlarged)."""
    preview = image.convert("RGB")
    if max(preview.size) > max_px:
        preview.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
