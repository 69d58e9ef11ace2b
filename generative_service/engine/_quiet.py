"""Silence the per-file progress bars of diffusers/transformers (noise in worker logs and tests)."""

from __future__ import annotations


def quiet_progress_bars() -> None:
    """Turn off library progress bars for this process (idempotent)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
