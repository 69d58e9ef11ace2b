"""The losses of the demo trainer's stages: VAE, UNet, canny ControlNet, style LoRA.

Each `*_loss` returns `loss_fn(step, generator)` for `loop.run_stage`; all randomness comes from
the step's generator. The diffusion losses share one recipe: DDPM scaled_linear noise, epsilon
prediction, min-SNR-5 weighting, and classifier-free-guidance dropout that ZEROES the text
embeddings (sequence and pooled), because that is what the pipeline feeds the unconditional
branch with `force_zeros_for_empty_prompt=True`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from generative_service.training import data as D

SNR_GAMMA = 5.0
HIGH_NOISE_WEIGHT_CAP = 50.0
KL_WEIGHT = 1e-6
ADD_TIME_IDS = (
    D.IMAGE_SIZE,
    D.IMAGE_SIZE,
    0,
    0,
    D.IMAGE_SIZE,
    D.IMAGE_SIZE,
)  # original, crop, target

LossFn = Callable[[int, torch.Generator], torch.Tensor]


@dataclass
class PromptTable:
    """Encoded prompts: `embeds` (P, 77, D), `pooled` (P, D2); `by_class[c]` lists class c's rows."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    by_class: torch.Tensor  # (10, templates) row indices
    generic: torch.Tensor  # row indices of the class-free prompts


@dataclass
class Latents:
    """Posterior of every training image under the trained VAE (unscaled) and the scaling factor."""

    mean: torch.Tensor
    std: torch.Tensor
    scaling_factor: float

    def sample(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        eps = torch.randn(self.mean[idx].shape, generator=gen)
        return (self.mean[idx] + self.std[idx] * eps) * self.scaling_factor


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds, pooled) exactly as the pipeline computes them at inference."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, device="cpu", do_classifier_free_guidance=False
    )
    return embeds, pooled


def prompt_table(pipe) -> PromptTable:
    """Encode every training phrasing of every digit plus the generic prompts."""
    per_class = [D.prompts_for(digit) for digit in range(D.NUM_CLASSES)]
    prompts = [p for group in per_class for p in group] + list(D.GENERIC_PROMPTS)
    embeds, pooled = encode_prompts(pipe, prompts)
    n = len(D.TRAIN_TEMPLATES)
    by_class = torch.arange(D.NUM_CLASSES * n).reshape(D.NUM_CLASSES, n)
    generic = torch.arange(D.NUM_CLASSES * n, len(prompts))
    return PromptTable(embeds, pooled, by_class, generic)


def vae_loss(vae, pixels: torch.Tensor, *, batch_size: int) -> LossFn:
    """L1 reconstruction + a small KL term (keeps the latent space smooth for diffusion)."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        x = pixels[torch.randint(len(pixels), (batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        return F.l1_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()

    return loss_fn


@torch.no_grad()
def encode_latents(
    vae, pixels: torch.Tensor, *, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled)."""
    means, stds = [], []
    for start in range(0, len(pixels), chunk):
        posterior = vae.encode(pixels[start : start + chunk]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def measure_scaling_factor(mean: torch.Tensor, std: torch.Tensor) -> float:
    """1 / std of sampled latents, so scaled latents have unit variance (as SD's 0.13025 does)."""
    total_var = mean.var() + std.pow(2).mean()
    return float(1.0 / total_var.sqrt())


def _conditioning(
    table: PromptTable,
    labels: torch.Tensor,
    gen: torch.Generator,
    *,
    p_generic: float,
    p_drop: float,
):
    """Per sample: a random phrasing of its class (or a generic prompt), zeroed with `p_drop`."""
    template = torch.randint(table.by_class.shape[1], (len(labels),), generator=gen)
    rows = table.by_class[labels, template]
    return condition_rows(table, rows, gen, p_generic=p_generic, p_drop=p_drop)


def condition_rows(
    table, rows: torch.Tensor, gen: torch.Generator, *, p_generic: float, p_drop: float
):
    """The UNet's conditioning for prompt `rows` of `table` (`embeds`, `pooled`, `generic`):
    each row replaced by a generic prompt with `p_generic`, zeroed with `p_drop` (the pipeline
    feeds zeros to the unconditional branch: force_zeros_for_empty_prompt)."""
    batch = len(rows)
    generic = table.generic[torch.randint(len(table.generic), (batch,), generator=gen)]
    rows = torch.where(torch.rand(batch, generator=gen) < p_generic, generic, rows)
    keep = (torch.rand(batch, generator=gen) >= p_drop).float()
    embeds = table.embeds[rows] * keep[:, None, None]
    pooled = table.pooled[rows] * keep[:, None]
    time_ids = torch.tensor([ADD_TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    return embeds, {"text_embeds": pooled, "time_ids": time_ids}


def _noised(scheduler, z0: torch.Tensor, gen: torch.Generator):
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=gen)
    return scheduler.add_noise(z0, noise, t), noise, t


def _min_snr_mse(
    scheduler, pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Epsilon MSE weighted by min(SNR, 5) / SNR (Hang et al., min-SNR weighting)."""
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1.0 - alphas)
    weight = snr.clamp(max=SNR_GAMMA) / snr
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def _controlled_noise_pred(unet, controlnet, noisy, t, embeds, added, control) -> torch.Tensor:
    """The UNet's noise prediction with the ControlNet's residuals for `control` added."""
    down, mid = controlnet(
        noisy, t, embeds, controlnet_cond=control, added_cond_kwargs=added, return_dict=False
    )
    return unet(
        noisy,
        t,
        embeds,
        added_cond_kwargs=added,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample


def _shape_weighted_mse(
    scheduler, pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Min-SNR-5 where the noise is low, and weight 1/SNR (capped) where SNR < 1.

    NOTE: an epsilon loss barely sees the x0 error at high noise (it is scaled by SNR), yet that
    is where a control decides the shape: with plain min-SNR weighting the ControlNet learned
    nothing in 800 steps; weighting those steps by 1/SNR makes it follow the edges in ~300.
    """
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1.0 - alphas)
    weight = torch.where(
        snr >= 1, snr.clamp(max=SNR_GAMMA) / snr, (1.0 / snr).clamp(max=HIGH_NOISE_WEIGHT_CAP)
    )
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def unet_loss(
    unet,
    scheduler,
    latents: Latents,
    labels: torch.Tensor,
    table: PromptTable,
    *,
    batch_size: int,
    p_generic: float = 0.05,
    p_drop: float = 0.1,
) -> LossFn:
    """Text-to-image denoising loss of the UNet."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(labels), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        embeds, added = _conditioning(table, labels[idx], gen, p_generic=p_generic, p_drop=p_drop)
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = unet(noisy, t, embeds, added_cond_kwargs=added).sample
        return _min_snr_mse(scheduler, pred, noise, t)

    return loss_fn


def controlnet_loss(
    controlnet,
    unet,
    scheduler,
    latents: Latents,
    labels: torch.Tensor,
    edges: torch.Tensor,
    table: PromptTable,
    *,
    batch_size: int,
) -> LossFn:
    """The denoising loss through a frozen UNet steered by the ControlNet's residuals.

    Prompts are often generic or dropped, so the edges (not the text) must carry the shape, and
    high-noise steps weigh more (`_shape_weighted_mse`).
    """

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(labels), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        embeds, added = _conditioning(table, labels[idx], gen, p_generic=0.3, p_drop=0.3)
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = _controlled_noise_pred(unet, controlnet, noisy, t, embeds, added, edges[idx])
        return _shape_weighted_mse(scheduler, pred, noise, t)

    return loss_fn


def edge_tensor(images: np.ndarray) -> torch.Tensor:
    """Control images as the ControlNet pipeline feeds them: (N, 3, H, W) white edges in [0, 1]."""
    return edges_as_control(D.canny_edges(images))


def edges_as_control(edges: np.ndarray) -> torch.Tensor:
    """(N, H, W) edge maps in {0, 1} -> (N, 3, H, W), the control image the pipeline feeds."""
    return torch.from_numpy(edges)[:, None].repeat(1, 3, 1, 1)
