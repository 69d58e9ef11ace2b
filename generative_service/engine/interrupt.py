"""Cancel points inside long model calls, so a cancel takes effect within one block of work.

A denoising step, a VAE decode or one upscaler tile can each take many seconds on a large image;
checking only between steps (or tiles) let a canceled job run on for minutes. `interrupt_points`
hangs a cheap check in front of chosen submodules for the duration of one call; the check raises
`Interrupted` and the exception unwinds the model call (no state is left half-changed: forward
passes hold nothing between calls).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

CHECK_EVERY_S = 0.1  # at most this often per call site; a check may be a Redis round trip


class Interrupted(Exception):
    """Raised from a cancel point: the work was canceled and stops here."""


class CancelCheck:
    """Calls `is_canceled` at most every `every_s` seconds; raises Interrupted once it says so."""

    def __init__(self, is_canceled: Callable[[], bool], *, every_s: float = CHECK_EVERY_S) -> None:
        self.is_canceled = is_canceled
        self.every_s = every_s
        self._last = float("-inf")

    def read_just_now(self) -> None:
        """The caller has just read what `is_canceled` reads: the next `every_s` need no read."""
        self._last = time.monotonic()

    def __call__(self, *_: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        if self.is_canceled():
            raise Interrupted()


@contextlib.contextmanager
def interrupt_points(modules: Iterable[Any], check: Callable[[], None]) -> Iterator[None]:
    """Run `check()` before the forward of each of `modules` while the block is active."""
    handles = [
        module.register_forward_pre_hook(lambda *_: check())
        for module in modules
        if hasattr(module, "register_forward_pre_hook")  # an exported graph stands in for some
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def unet_blocks(unet: Any) -> list[Any]:
    """The UNet's (or ControlNet's) down/mid/up blocks: a few points per denoising step."""
    blocks = [*getattr(unet, "down_blocks", []), *getattr(unet, "up_blocks", [])]
    mid = getattr(unet, "mid_block", None)
    return blocks + ([mid] if mid is not None else [])


def vae_decoder_blocks(vae: Any) -> list[Any]:
    """Every convolution of the VAE decoder: one full-resolution up block alone takes tens of
    seconds on a CPU at 1536 px, so block boundaries are too coarse here."""
    decoder = getattr(vae, "decoder", None)
    return conv_layers(decoder) if decoder is not None else []


def conv_layers(model: Any) -> list[Any]:
    """Every convolution of `model` (the upscaler: one tile is hundreds of them)."""
    import torch

    return [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
