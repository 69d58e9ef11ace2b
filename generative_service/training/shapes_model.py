"""The shapes demo model's modules and training losses (SDXL architecture, toy width).

What differs from the digits recipe, and why (measured in the feasibility run, issue #19):
- VAE GroupNorm with ONE group: with 8 groups over 8 channels each channel is normalised per
  image, which erases hue (reconstructions came out olive/teal).
- UNet cross-attention at BOTH resolutions (8x8 and 4x4 latents): relations ("above", "left of")
  are decided where a latent position can still tell top from bottom.
- The two CLIP text encoders are TRAINED with the UNet: a frozen random encoder does not bind a
  colour to its shape, nor tell the first object of a relation from the second.
- After the UNet, the VAE decoder alone is fine-tuned (encoder frozen, so the latents the UNet
  learned stay valid).

Every builder seeds torch itself, so untrained weights are the same on every run. Losses return
`loss_fn(step, generator)` for `loop.run_stage` and draw all their randomness from that generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from generative_service.engine.tokenizer import build_clip_tokenizer, clip_special_ids
from generative_service.training import shapes as S
from generative_service.training.stages import (
    Latents,
    _controlled_noise_pred,
    _min_snr_mse,
    _noised,
    _shape_weighted_mse,
)

TEXT_DIM = 64
TEXT_LAYERS = 3  # SDXL reads the penultimate layer: 2 layers of context per token
TIME_EMBED_DIM = 32
VOCAB_SIZE = 640
MAX_TOKENS = 77
ADD_TIME_IDS = (S.IMAGE_SIZE, S.IMAGE_SIZE, 0, 0, S.IMAGE_SIZE, S.IMAGE_SIZE)
UNET_CHANNELS = (64, 128)
VAE_CHANNELS = (8, 16, 32, 64)


def build_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """Both CLIP tokenizers, merges learned from every trained phrasing (deterministic)."""
    corpus = S.every_phrasing()
    return build_clip_tokenizer(corpus, VOCAB_SIZE), build_clip_tokenizer(corpus, VOCAB_SIZE)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_attention_heads=4,
        num_hidden_layers=TEXT_LAYERS,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        hidden_act="gelu",
        **clip_special_ids(tokenizer),
    )


def build_text_encoders(
    tokenizer: CLIPTokenizer, tokenizer_2: CLIPTokenizer
) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """CLIPTextModel + CLIPTextModelWithProjection, random (trained with the UNet)."""
    torch.manual_seed(2)
    first = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(3)
    second = CLIPTextModelWithProjection(_text_config(tokenizer_2))
    return first, second


def build_vae() -> AutoencoderKL:
    """AutoencoderKL, 3 downsamplings (scale factor 8, as SDXL), GroupNorm with one group."""
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=1,
        latent_channels=4,
        sample_size=S.IMAGE_SIZE,
        scaling_factor=1.0,  # measured after training
        force_upcast=False,
    )


def build_unet() -> UNet2DConditionModel:
    """SDXL UNet (text_time addition embedding), cross-attention at 8x8 and 4x4 latents."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=S.IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        norm_num_groups=32,
        cross_attention_dim=2 * TEXT_DIM,  # penultimate states of both encoders, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_DIM,
    )


class TextSide(torch.nn.Module):
    """Both text encoders as one module, encoding token ids the way the SDXL pipeline does:
    penultimate hidden states of both, concatenated; pooled = encoder 2's projection."""

    def __init__(self, encoder: CLIPTextModel, encoder_2: CLIPTextModelWithProjection) -> None:
        super().__init__()
        self.encoder, self.encoder_2 = encoder, encoder_2

    def forward(self, ids: torch.Tensor, ids_2: torch.Tensor):
        first = self.encoder(ids, output_hidden_states=True)
        second = self.encoder_2(ids_2, output_hidden_states=True)
        embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return embeds, second.text_embeds


def token_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(P, 77) ids exactly as the pipeline tokenizes."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@dataclass
class SceneSet:
    """Training scenes: pixels in [-1, 1], and for each scene the ids of its true prompts."""

    pixels: torch.Tensor  # (N, 3, 64, 64)
    prompts: list[str]  # every distinct prompt
    ids: torch.Tensor  # (P, 77)
    ids_2: torch.Tensor
    options: torch.Tensor  # (N, K) prompt rows per scene (padded by repetition)
    generic: torch.Tensor  # rows of the attribute-free prompts


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 -> (N, 3, 64, 64) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def scene_set(count: int, tokenizers, *, seed: int = 0, pastel: bool = False) -> SceneSet:
    """`count` training scenes rendered, with every true prompt of each tokenized."""
    scenes = S.training_scenes(count, seed=seed)
    pixels = to_pixels(S.render_many(scenes, pastel=pastel))
    per_scene = [S.prompts_for_scene(scene) for scene in scenes]
    prompts = sorted({p for group in per_scene for p in group} | set(S.GENERIC_PROMPTS))
    row = {p: i for i, p in enumerate(prompts)}
    width = max(len(group) for group in per_scene)
    options = torch.tensor(
        [[row[group[k % len(group)]] for k in range(width)] for group in per_scene]
    )
    # NOTE: padding by repetition over-weights the first prompts of short lists a little; the
    # lists are ordered so the plain forms come first, which is what users type most.
    generic = torch.tensor([row[p] for p in S.GENERIC_PROMPTS])
    return SceneSet(
        pixels,
        prompts,
        token_ids(tokenizers[0], prompts),
        token_ids(tokenizers[1], prompts),
        options,
        generic,
    )


def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, *, batch_size: int, kl: float = 1e-6):
    """L1 + a little MSE reconstruction and a small KL term on full 64 px scenes."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        x = pixels[torch.randint(len(pixels), (batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + kl * posterior.kl().mean()

    return loss_fn


def decoder_loss(vae: AutoencoderKL, latents: Latents, pixels: torch.Tensor, *, batch_size: int):
    """Decoder-only fine-tune: decode sampled latents of the frozen encoder back to the scene."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        z = latents.sample(idx, gen) / latents.scaling_factor
        recon = vae.decode(z).sample
        x = pixels[idx]
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)

    return loss_fn


def _conditioning(text: TextSide, data: SceneSet, idx, gen, *, p_generic: float, p_drop: float):
    batch = len(idx)
    pick = torch.randint(data.options.shape[1], (batch,), generator=gen)
    rows = data.options[idx, pick]
    generic = data.generic[torch.randint(len(data.generic), (batch,), generator=gen)]
    rows = torch.where(torch.rand(batch, generator=gen) < p_generic, generic, rows)
    keep = (torch.rand(batch, generator=gen) >= p_drop).float()
    embeds, pooled = text(data.ids[rows], data.ids_2[rows])
    # The pipeline feeds zeros to the unconditional branch (force_zeros_for_empty_prompt).
    embeds = embeds * keep[:, None, None]
    pooled = pooled * keep[:, None]
    time_ids = torch.tensor([ADD_TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    return embeds, {"text_embeds": pooled, "time_ids": time_ids}


class UNetAndText(torch.nn.Module):
    """The UNet and both text encoders, trained together as one stage."""

    def __init__(self, unet: UNet2DConditionModel, text: TextSide) -> None:
        super().__init__()
        self.unet, self.text = unet, text


def unet_loss(
    model: UNetAndText,
    scheduler,
    latents: Latents,
    data: SceneSet,
    *,
    batch_size: int,
    p_generic: float = 0.03,
    p_drop: float = 0.1,
):
    """Text-to-image denoising loss (epsilon, min-SNR-5), gradients into the text encoders too."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data.options), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        embeds, added = _conditioning(
            model.text, data, idx, gen, p_generic=p_generic, p_drop=p_drop
        )
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = model.unet(noisy, t, embeds, added_cond_kwargs=added).sample
        return _min_snr_mse(scheduler, pred, noise, t)

    return loss_fn


def lora_loss(unet, text: TextSide, scheduler, latents: Latents, data: SceneSet, *, batch_size):
    """The denoising loss on pastel scenes through a LoRA'd UNet (text encoders frozen)."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data.options), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        with torch.no_grad():
            embeds, added = _conditioning(text, data, idx, gen, p_generic=0.03, p_drop=0.1)
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = unet(noisy, t, embeds, added_cond_kwargs=added).sample
        return _min_snr_mse(scheduler, pred, noise, t)

    return loss_fn


def controlnet_loss(
    controlnet,
    unet,
    text: TextSide,
    scheduler,
    latents: Latents,
    data: SceneSet,
    edges,
    *,
    batch_size,
):
    """Denoising through the frozen UNet steered by the ControlNet; prompts often generic or
    dropped so the edges must carry the shapes; high-noise steps weigh more."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data.options), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        with torch.no_grad():
            embeds, added = _conditioning(text, data, idx, gen, p_generic=0.3, p_drop=0.3)
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = _controlled_noise_pred(unet, controlnet, noisy, t, embeds, added, edges[idx])
        return _shape_weighted_mse(scheduler, pred, noise, t)

    return loss_fn


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, pixels: torch.Tensor, *, chunk: int = 256) -> np.ndarray:
    """Encode (posterior mean) and decode: (N, 64, 64, 3) uint8, what the VAE lets through."""
    out = []
    for start in range(0, len(pixels), chunk):
        x = pixels[start : start + chunk]
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)
