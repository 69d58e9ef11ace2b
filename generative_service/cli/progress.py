"""What `gensvc generate` and `gensvc demo` show while a job runs, fed by its SSE events.

On a terminal: one tqdm bar, redrawn in place. Anywhere else (a pipe, a CI log, a file): one line
per state ("queued (position 1)", "running", "denoising (30 steps)", "storing", "succeeded"),
each printed once - tqdm would write a frame per refresh, carriage returns and all.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm

from generative_service.schemas import Event


def state_of(event: Event) -> str | None:
    """The state an event puts the job in, as the display names it (None: no change)."""
    if event.type == "queued":
        return f"queued (position {event.position})" if event.position else "queued"
    if event.type == "started":
        return "running"
    if event.type == "progress":
        return "denoising" if event.total_steps else None
    if event.type == "stage":
        return event.stage.value if event.stage else None
    if event.is_terminal:
        return event.type
    return None


def terminal_size(stream: TextIO, default: tuple[int, int] = (80, 24)) -> tuple[int, int]:
    """The terminal's (columns, rows); `default` for what it reports as 0.

    NOTE: a pseudo-terminal nobody sized (`script` without a terminal, some `docker run -t`)
    reports 0x0, and tqdm then hides its bar (its row is past the last of 0): no bar at all.
    """
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return default
    return size.columns or default[0], size.lines or default[1]


class ProgressDisplay:
    """Shows a job's progress on `stream`: a bar on a terminal, state lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.state: str | None = None
        self.total_steps: int | None = None
        self.bar: tqdm | None = None
        if not quiet and self.stream.isatty():
            columns, rows = terminal_size(self.stream)
            self.bar = tqdm(
                total=None, unit="step", file=self.stream, desc="queued", ncols=columns, nrows=rows
            )

    def update(self, event: Event) -> None:
        """Take one event into the display."""
        if event.type == "progress" and event.total_steps:
            self.total_steps = event.total_steps
        state = state_of(event)
        if self.bar is not None:
            self._draw(event, state)
        elif state is not None and state != self.state and not self.quiet:
            steps = f" ({self.total_steps} steps)" if state == "denoising" else ""
            print(f"{state}{steps}", file=self.stream, flush=True)
        self.state = state or self.state

    def _draw(self, event: Event, state: str | None) -> None:
        assert self.bar is not None
        if event.type == "progress" and event.total_steps:
            self.bar.total = event.total_steps
            self.bar.n = event.step or 0
        if state is not None:
            self.bar.set_description_str(state, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
