"""Negative prompts that take a concept away, not only stand in for the unconditional branch.

With plain classifier-free guidance a negative prompt replaces the unconditional prediction:
`e = e(neg) + g (e(pos) - e(neg))`. When the prompt itself holds what the negative names (`a red
circle`, negative `red`), both predictions pull toward it and it is drawn anyway. Composable
negation (Liu et al., "Compositional Visual Generation with Composable Diffusion Models", 2022)
adds the empty prompt's prediction and subtracts the negative's direction from it:

    e = e(empty) + g (e(pos) - e(empty)) - gn (e(neg) - e(empty)),   gn = ratio x g

The pipelines compute `u + g (e(pos) - u)` from the unconditional half `u` of each UNet call, so
`NegatedForward` wraps the UNet's forward for one pipeline call: after each CFG call it runs the
UNet once more, on the rows that have a negative prompt, with the empty prompt, and hands back
`u = e(empty) + gn / (g - 1) (e(neg) - e(empty))` in those rows, which makes the pipeline's own
formula the one above. Rows without a negative prompt are returned untouched. The extra call has
at most the batch's own number of rows, so every engine backend serves it as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Negation:
    """What one pipeline call needs: the image rows with a negative prompt, their gn / (g - 1),
    and the empty prompt's embeddings for those rows."""

    rows: list[int]
    weights: list[float]
    empty_embeds: torch.Tensor  # (len(rows), tokens, dim)
    empty_pooled: torch.Tensor  # (len(rows), pooled dim)


def plan_negation(
    negated: Sequence[bool],
    guidance: Sequence[float],
    ratio: float,
    empty: tuple[torch.Tensor, torch.Tensor],
) -> Negation | None:
    """The Negation of a CFG call whose image i has a negative prompt when `negated[i]`; None
    when no image has one or `ratio` is 0 (plain CFG)."""
    rows = [i for i, flag in enumerate(negated) if flag and guidance[i] > 1.0]
    if ratio <= 0 or not rows:
        return None
    embeds, pooled = empty
    return Negation(
        rows=rows,
        weights=[ratio * guidance[i] / (guidance[i] - 1.0) for i in rows],
        # NOTE: materialised, not expand()ed: exported graphs take contiguous inputs only
        empty_embeds=embeds.repeat(len(rows), *([1] * (embeds.dim() - 1))),
        empty_pooled=pooled.repeat(len(rows), *([1] * (pooled.dim() - 1))),
    )


class NegatedForward:
    """A UNet forward that applies `negation` to every CFG call (2 x images rows)."""

    def __init__(self, inner: Any, negation: Negation, images: int) -> None:
        self.inner = inner
        self.negation = negation
        self.images = images
        device = negation.empty_embeds.device  # once per pipeline call, not per step
        self.rows = torch.tensor(negation.rows, device=device)
        self.weights = torch.tensor(negation.weights, device=device)

    def __call__(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(sample, timestep, *args, **kwargs)
        if sample.shape[0] != 2 * self.images:
            return out
        pred = _prediction(out)
        b, n = self.images, self.negation
        index = self.rows + b  # the positive half's rows

        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 2 * b:
                return value.index_select(0, index)
            if isinstance(value, list | tuple):
                return type(value)(pick(item) for item in value)
            return value

        rest = dict(kwargs)
        rest["encoder_hidden_states"] = n.empty_embeds.to(pred.dtype)
        added = dict(kwargs.get("added_cond_kwargs") or {})
        added["text_embeds"] = n.empty_pooled.to(pred.dtype)
        if "time_ids" in added:
            added["time_ids"] = pick(added["time_ids"])
        rest["added_cond_kwargs"] = added
        for key in ("down_block_additional_residuals", "mid_block_additional_residual"):
            if key in rest:
                rest[key] = pick(rest[key])
        if args:  # encoder_hidden_states given by position
            args = args[1:]
        e0 = _prediction(self.inner(pick(sample), pick(timestep), *args, **rest))
        weights = self.weights.to(pred.dtype).view(-1, *([1] * (pred.dim() - 1)))
        negative = pred.index_select(0, self.rows)
        pred = pred.clone()
        pred[self.rows] = e0 + weights * (negative - e0)
        if isinstance(out, tuple):
            return (pred, *out[1:])
        out.sample = pred
        return out


def _prediction(out: Any) -> torch.Tensor:
    """The noise prediction of a UNet output (`return_dict=False` tuple or output object)."""
    return out[0] if isinstance(out, tuple) else out.sample


@contextlib.contextmanager
def negated(unet: Any, negation: Negation | None, images: int) -> Iterator[None]:
    """`unet`'s forward wrapped by NegatedForward for the duration (nothing when None)."""
    if negation is None:
        yield
        return
    had = "forward" in unet.__dict__
    previous = unet.__dict__.get("forward")
    unet.forward = NegatedForward(unet.forward, negation, images)
    try:
        yield
    finally:
        if had:
            unet.forward = previous
        else:
            del unet.forward
