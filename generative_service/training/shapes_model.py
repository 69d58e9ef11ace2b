"""The shapes demo model's modules and training losses (SDXL architecture, toy width).

What differs from the digits recipe, and why (measured in the feasibility run, issue #19):
- VAE GroupNorm with ONE group: with 8 groups over 8 channels each channel is normalised per
  image, which erases hue (reconstructions came out olive/teal).
- UNet cross-attention at BOTH resolutions (8x8 and 4x4 latents): relations ("above", "left of")
  are decided where a latent position can still tell top from bottom.
- Text encoder 2 is PRETRAINED, then frozen: every state after the end-of-text token (those
  positions see the whole prompt) and the pooled embedding are trained to name the prompt's
  layout (`shapes.prompt_meaning`: per object its colour, shape and side, and the count) through
  linear heads that are then dropped. Trained jointly with the UNet (an earlier recipe) the
  encoders stayed a bag of words ("above" and "below" prompts at cosine 0.99, position 4 %).
  Text encoder 1 stays random and frozen (`PRETRAINED_ENCODERS`): with both pretrained, colour
  attribution fell to 39 % where the feasibility run's random encoders had 81 %.
- The VAE decoder alone is fine-tuned after the VAE (encoder frozen, so the latents stay valid),
  on the training scenes and the `pastel` LoRA's scenes: a decoder that never saw pastel draws
  its latents saturated again, and the LoRA had nothing to show.

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
    condition_rows,
)

TEXT_DIM = 64
TEXT_LAYERS = 3  # SDXL reads the penultimate layer: 2 layers of context per token
TIME_EMBED_DIM = 32
VOCAB_SIZE = 640
MAX_TOKENS = 77
UNET_CHANNELS = (
    96,
    192,
)  # the feasibility run: (64, 128) drew single shapes right 69 % of the time
UNET_HEADS = (3, 6)  # 32 channels per head
VAE_CHANNELS = (8, 16, 32, 64)
# Which text encoders the layout pretraining trains ("first", "second"). The feasibility run's
# FROZEN RANDOM encoders bound colours to shapes best (colour attribution 81 %; both pretrained:
# 39 %): a random encoder keeps every word's state distinct, so the UNet's cross-attention can
# find "red" next to "circle". Encoder 1 stays random; encoder 2 (and the pooled embedding) learns
# the layout, which the relations need.
PRETRAINED_ENCODERS: tuple[str, ...] = ("second",)


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
    """CLIPTextModel + CLIPTextModelWithProjection, random (pretrained by `text_loss`)."""
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
        attention_head_dim=UNET_HEADS,
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


class LayoutHeads(torch.nn.Module):
    """Linear read-outs of `shapes.prompt_meaning` from each encoder's states and the pooled
    embedding: what the text pretraining fits (dropped afterwards; not part of the bundle)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        total = sum(S.MEANING_CLASSES)
        self.first = torch.nn.Linear(TEXT_DIM, total)
        self.second = torch.nn.Linear(TEXT_DIM, total)
        self.pooled = torch.nn.Linear(TEXT_DIM, total)


class TextAndHeads(torch.nn.Module):
    """The text pretraining stage's trainable module."""

    def __init__(self, text: TextSide, heads: LayoutHeads) -> None:
        super().__init__()
        self.text, self.heads = text, heads


@dataclass
class Phrasings:
    """Every trained phrasing (`shapes.every_phrasing`), tokenized, with its layout."""

    prompts: list[str]
    ids: torch.Tensor  # (P, 77)
    ids_2: torch.Tensor
    targets: torch.Tensor  # (P, len(MEANING_CLASSES))

    @classmethod
    def build(cls, tokenizers) -> Phrasings:
        prompts = S.every_phrasing()
        return cls(
            prompts,
            token_ids(tokenizers[0], prompts),
            token_ids(tokenizers[1], prompts),
            torch.tensor([S.prompt_meaning(p) for p in prompts]),
        )


def layout_accuracy(model: TextAndHeads, phrasings: Phrasings) -> float:
    """Share of phrasings whose pooled read-out gets every field right (after pretraining: 1.0)."""
    with torch.no_grad():
        _, pooled = model.text(phrasings.ids, phrasings.ids_2)
        logits, start = model.heads.pooled(pooled), 0
        right = torch.ones(len(phrasings.prompts), dtype=torch.bool)
        for k, width in enumerate(S.MEANING_CLASSES):
            right &= logits[:, start : start + width].argmax(-1) == phrasings.targets[:, k]
            start += width
    return float(right.float().mean())


def text_loss(
    model: TextAndHeads,
    phrasings: Phrasings,
    *,
    batch_size: int,
    encoders: tuple[str, ...] = PRETRAINED_ENCODERS,
):
    """Text pretraining: the layout from every position from the end-of-text token on (the
    penultimate states of the `encoders` pretrained, what the UNet attends to) and from the pooled
    embedding (encoder 2's)."""
    ids, ids_2, targets = phrasings.ids, phrasings.ids_2, phrasings.targets
    eos = (ids == model.text.encoder.config.eos_token_id).int().argmax(-1)  # the first one
    eos_2 = (ids_2 == model.text.encoder_2.config.eos_token_id).int().argmax(-1)
    positions = torch.arange(ids.shape[1])

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        rows = torch.randint(len(ids), (batch_size,), generator=gen)
        second = model.text.encoder_2(ids_2[rows], output_hidden_states=True)
        want = targets[rows]
        per_position = want[:, None, :].expand(-1, len(positions), -1)
        loss = _position_losses(
            model.heads.pooled(second.text_embeds)[:, None], want[:, None]
        ).mean()
        read = [(second.hidden_states[-2], eos_2, model.heads.second)]
        if "first" in encoders:
            first = model.text.encoder(ids[rows], output_hidden_states=True)
            read.append((first.hidden_states[-2], eos, model.heads.first))
        for states, ends, head in read:
            mask = (positions[None] >= ends[rows, None]).float()  # (B, 77)
            per = _position_losses(head(states), per_position)
            loss = loss + (per * mask).sum() / mask.sum()
        return loss

    return loss_fn


def _position_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) summed cross-entropy per position."""
    out, start = 0.0, 0
    for k, width in enumerate(S.MEANING_CLASSES):
        part = logits[..., start : start + width]
        out = out + F.cross_entropy(
            part.reshape(-1, width), targets[..., k].reshape(-1), reduction="none"
        ).reshape(targets.shape[:2])
        start += width
    return out


@dataclass
class PromptTable:
    """Every training prompt encoded once by the frozen text encoders (what the UNet stages read)."""

    embeds: torch.Tensor  # (P, 77, 2 * TEXT_DIM)
    pooled: torch.Tensor  # (P, TEXT_DIM)
    generic: torch.Tensor  # rows of the attribute-free prompts

    @classmethod
    @torch.no_grad()
    def encode(cls, text: TextSide, data: SceneSet, *, chunk: int = 256) -> PromptTable:
        parts = [
            text(data.ids[i : i + chunk], data.ids_2[i : i + chunk])
            for i in range(0, len(data.ids), chunk)
        ]
        return cls(torch.cat([e for e, _ in parts]), torch.cat([p for _, p in parts]), data.generic)


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


def decoder_loss(
    vae: AutoencoderKL,
    latents: Latents,
    pixels: torch.Tensor,
    *,
    batch_size: int,
    styled: tuple[Latents, torch.Tensor] | None = None,
    styled_share: float = 0.25,
):
    """Decoder-only fine-tune: decode sampled latents of the frozen encoder back to the scene.

    `styled` (latents, pixels of the LoRA's style): that share of every batch. A decoder that
    never saw the style decodes its latents back to the base look (pastel came back saturated:
    0.73 vs 0.35 real), so no LoRA on the UNet could show it.
    """
    n_styled = round(styled_share * batch_size) if styled is not None else 0

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(pixels), (batch_size - n_styled,), generator=gen)
        z, x = latents.sample(idx, gen), pixels[idx]
        if styled is not None:
            s_latents, s_pixels = styled
            s_idx = torch.randint(len(s_pixels), (n_styled,), generator=gen)
            z = torch.cat([z, s_latents.sample(s_idx, gen)])
            x = torch.cat([x, s_pixels[s_idx]])
        recon = vae.decode(z / latents.scaling_factor).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)

    return loss_fn


def _conditioning(table: PromptTable, data: SceneSet, idx, gen, *, p_generic: float, p_drop: float):
    """Per scene: one of its true prompts at random (or a generic prompt), zeroed with `p_drop`."""
    pick = torch.randint(data.options.shape[1], (len(idx),), generator=gen)
    return condition_rows(table, data.options[idx, pick], gen, p_generic=p_generic, p_drop=p_drop)


def unet_loss(
    unet: UNet2DConditionModel,
    table: PromptTable,
    scheduler,
    latents: Latents,
    data: SceneSet,
    *,
    batch_size: int,
    p_generic: float = 0.03,
    p_drop: float = 0.1,
):
    """Text-to-image denoising loss (epsilon, min-SNR-5) on the frozen encoders' prompt table."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data.options), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        embeds, added = _conditioning(table, data, idx, gen, p_generic=p_generic, p_drop=p_drop)
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = unet(noisy, t, embeds, added_cond_kwargs=added).sample
        return _min_snr_mse(scheduler, pred, noise, t)

    return loss_fn


def lora_loss(unet, table: PromptTable, scheduler, latents: Latents, data: SceneSet, *, batch_size):
    """The denoising loss on pastel scenes through a LoRA'd UNet (text encoders frozen)."""

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data.options), (batch_size,), generator=gen)
        z0 = latents.sample(idx, gen)
        embeds, added = _conditioning(table, data, idx, gen, p_generic=0.03, p_drop=0.1)
        noisy, noise, t = _noised(scheduler, z0, gen)
        pred = unet(noisy, t, embeds, added_cond_kwargs=added).sample
        return _min_snr_mse(scheduler, pred, noise, t)

    return loss_fn


def controlnet_loss(
    controlnet,
    unet,
    table: PromptTable,
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
        embeds, added = _conditioning(table, data, idx, gen, p_generic=0.3, p_drop=0.3)
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
