"""A resumable, deterministic training loop shared by every stage of the demo trainer.

Determinism: step `i` draws all its randomness (batch indices, noise, timesteps, dropout) from a
generator seeded with `(seed, i)`, so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken; no RNG state needs saving.

Checkpoints (`WORK/NAME.pt`) hold the trainable weights, optimizer, LR schedule, EMA weights,
the step reached, seconds spent and a fingerprint of the stage's hyperparameters; a finished
stage's checkpoint is what later stages and a resumed run load.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class StageConfig:
    """Hyperparameters of one training stage (all part of its checkpoint fingerprint)."""

    name: str
    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    ema_decay: float | None = None
    seed: int = 0
    checkpoint_every: int = 100

    def fingerprint(self) -> str:
        fields = asdict(self)
        fields.pop("checkpoint_every")  # how often we save does not change the result
        return json.dumps(fields, sort_keys=True)


@dataclass
class StageResult:
    """What a finished stage reports (for the model card)."""

    name: str
    steps: int
    seconds: float
    final_loss: float


class StageMismatch(RuntimeError):
    """A checkpoint in the work directory was made with different hyperparameters."""


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator every random draw of `step` comes from."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def cosine_lr(config: StageConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero over the stage's steps (multiplier of `lr`)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))

    return factor


class EMA:
    """Exponential moving average of parameters (the weights that get saved).

    The decay warms up as min(decay, (1 + t) / (10 + t)): a plain 0.999 average over 2000 steps
    would still hold 13 % of the random initialisation.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.params = params
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for shadow, param in zip(self.shadow, self.params, strict=True):
            shadow.lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow, params, strict=True):
            param.copy_(shadow)


def run_stage(
    config: StageConfig,
    module: torch.nn.Module,
    loss_fn: Callable[[int, torch.Generator], torch.Tensor],
    *,
    work_dir: Path,
    resume: bool,
    progress: bool = True,
) -> StageResult:
    """Train the trainable parameters of `module` for `config.steps` steps of `loss_fn(step, gen)`.

    On return `module` holds the final weights (the EMA weights when `ema_decay` is set).
    With `resume`, a checkpoint of the same stage and hyperparameters is continued (or, if it is
    complete, just loaded); without it the stage starts from scratch.

    Raises:
        StageMismatch: `resume` with a checkpoint whose hyperparameters differ.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr(config))
    ema = EMA(params, config.ema_decay) if config.ema_decay else None
    path = Path(work_dir) / f"{config.name}.pt"
    start, spent, last_loss = 0, 0.0, float("nan")
    if resume and path.is_file():
        start, spent, last_loss = _load(path, config, names, params, optimizer, schedule, ema)
    module.train()
    began = time.monotonic()
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=config.name,
        disable=not progress,
        dynamic_ncols=True,
    )
    for step in range(start, config.steps):
        loss = loss_fn(step, step_generator(config.seed, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update(step)
        last_loss = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            seconds = spent + time.monotonic() - began
            _save(path, config, done, seconds, last_loss, names, params, optimizer, schedule, ema)
    bar.close()
    spent += time.monotonic() - began
    if ema is not None:
        ema.copy_to(params)
    module.eval()
    return StageResult(config.name, config.steps, round(spent, 1), last_loss)


def _save(
    path: Path,
    config: StageConfig,
    step: int,
    seconds: float,
    loss: float,
    names,
    params,
    optimizer,
    schedule,
    ema,
) -> None:
    state = {
        "fingerprint": config.fingerprint(),
        "step": step,
        "seconds": seconds,
        "loss": loss,
        "weights": {n: p.detach().clone() for n, p in zip(names, params, strict=True)},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "ema": [t.clone() for t in ema.shadow] if ema is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".pt.partial")
    torch.save(state, partial)
    os.replace(partial, path)  # NOTE: atomic, so a kill mid-save never leaves a torn checkpoint


def _load(
    path: Path, config: StageConfig, names, params, optimizer, schedule, ema
) -> tuple[int, float, float]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["fingerprint"] != config.fingerprint():
        raise StageMismatch(
            f"{path} was trained with other settings ({state['fingerprint']}); "
            "run without --resume or use another --work directory"
        )
    with torch.no_grad():
        for name, param in zip(names, params, strict=True):
            param.copy_(state["weights"][name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if ema is not None and state["ema"] is not None:
        ema.shadow = [t.clone() for t in state["ema"]]
    return state["step"], state["seconds"], state["loss"]
