"""Tiled super-resolution with context, so memory stays bounded and no seam is visible.

The whole image is first reflect-padded by `PREPAD` px (as realesrgan-ncnn-vulkan does; the model
then sees natural-looking content past the border). The padded image is cut into `tile` x `tile`
cores; each core is run together with up to `CONTEXT` px of its neighbours and only the core's
output is kept. 10 px of context already gives ~41 dB against the untiled result (tests/postprocess/test_upscaler.py);
0 px shows seams. With `tile=0`, or an image no larger than one tile, it runs in one piece.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PREPAD = 10
CONTEXT = 16


def pad_image(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad a (1, C, H, W) tensor; tiny images (side <= pad) fall back to edge replication."""
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def tile_spans(length: int, tile: int, context: int) -> list[tuple[int, int, int, int]]:
    """(core_start, core_end, window_start, window_end) along one axis of `length` px."""
    if tile <= 0 or length <= tile:
        return [(0, length, 0, length)]
    spans = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        spans.append((start, end, max(0, start - context), min(length, end + context)))
    return spans


def upscale_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    scale: int,
    tile: int,
    context: int = CONTEXT,
    prepad: int = PREPAD,
    before_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run an SR `model` over (1, C, H, W) `x` in [0, 1]; returns (1, C, H*scale, W*scale) on CPU.

    The output is assembled in float32 on the CPU so device memory holds only one tile at a time.
    `before_tile` runs before each tile (a cancel check may raise there).
    """
    if tile > 0 and max(x.shape[-2:]) <= tile:
        tile = 0  # fits in one tile (the tile size counts image pixels, not the padding)
    padded = pad_image(x, prepad)
    _, channels, height, width = padded.shape
    out = torch.empty((1, channels, height * scale, width * scale), dtype=torch.float32)
    for y0, y1, wy0, wy1 in tile_spans(height, tile, context):
        for x0, x1, wx0, wx1 in tile_spans(width, tile, context):
            if before_tile is not None:
                before_tile()
            result = model(padded[:, :, wy0:wy1, wx0:wx1])
            top, left = (y0 - wy0) * scale, (x0 - wx0) * scale
            core = result[:, :, top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale]
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = core.float().cpu()
    crop = prepad * scale
    return out[:, :, crop : height * scale - crop, crop : width * scale - crop]
