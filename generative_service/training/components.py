"""The demo model's modules: the SDXL architecture at a size a 2-core CPU trains in minutes.

Every builder seeds torch itself, so the untrained weights (and the frozen text encoders, which
are never trained) are the same on every run.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from generative_service.engine.tiny import small_sdxl_unet, small_sdxl_vae
from generative_service.engine.tokenizer import build_clip_tokenizer, clip_special_ids
from generative_service.training.data import IMAGE_SIZE

TEXT_DIM = 64
TIME_EMBED_DIM = 32
VOCAB_SIZE = 1024
TOKEN_EMBED_STD = 0.1  # see _text_encoder
# The scheduler SDXL trains with (and ships as EulerDiscrete): scaled_linear betas, 1000 steps.
NOISE_SCHEDULE = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
)
LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
]


def build_tokenizers(corpus: list[str]) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """Both CLIP tokenizers, merges learned from the training prompts (deterministic)."""
    return build_clip_tokenizer(corpus, VOCAB_SIZE), build_clip_tokenizer(corpus, VOCAB_SIZE)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_attention_heads=4,
        num_hidden_layers=2,  # SDXL reads the penultimate layer: 2 is the fewest that works
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        hidden_act="gelu",
        **clip_special_ids(tokenizer),
    )


def _text_encoder(cls: type, tokenizer: CLIPTokenizer, *, seed: int) -> torch.nn.Module:
    """A frozen random CLIP encoder.

    NOTE: with CLIP's default init (std 0.02) a token's own embedding is no larger than its
    position embedding and the attention mixing, so a digit word placed in an unseen phrasing
    looks new. Larger token embeddings keep each word's identity dominant, which is what lets
    some unseen phrasings work.
    """
    torch.manual_seed(seed)
    model = cls(_text_config(tokenizer))
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding.copy_(
            torch.randn(embedding.shape, generator=torch.Generator().manual_seed(seed))
            * TOKEN_EMBED_STD
        )
    return model.eval().requires_grad_(False)


def build_text_encoders(
    tokenizer: CLIPTokenizer, tokenizer_2: CLIPTokenizer
) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """CLIPTextModel + CLIPTextModelWithProjection, random and frozen."""
    return (
        _text_encoder(CLIPTextModel, tokenizer, seed=2),
        _text_encoder(CLIPTextModelWithProjection, tokenizer_2, seed=3),
    )


def build_vae() -> AutoencoderKL:
    """AutoencoderKL with 3 downsamplings (scale factor 8, like SDXL): 64 px -> 8x8x4 latents."""
    torch.manual_seed(1)
    return small_sdxl_vae(
        image_size=IMAGE_SIZE,
        block_out_channels=(8, 16, 32, 64),
        norm_num_groups=8,
        scaling_factor=1.0,  # measured after training (`measure_scaling_factor`)
    )


def build_unet() -> UNet2DConditionModel:
    """SDXL UNet (text_time addition embedding) with channels (64, 128), 1 layer per block."""
    torch.manual_seed(0)
    return small_sdxl_unet(
        image_size=IMAGE_SIZE,
        block_out_channels=(64, 128),
        norm_num_groups=32,
        text_dim=TEXT_DIM,
        time_embed_dim=TIME_EMBED_DIM,
    )


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A canny ControlNet initialised from the trained UNet (zero-initialised outputs: no effect yet).

    NOTE: `from_unet` also zeroes the last layer of the condition encoder; with both ends at zero
    no gradient reaches the condition path until the output convolutions have grown (the slow
    "sudden convergence" of ControlNet training). A small random last layer removes that stall
    and, since the outputs stay zero, still leaves the base model untouched at the start.
    """
    torch.manual_seed(4)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32, 64, 64)
    )
    conv_out = controlnet.controlnet_cond_embedding.conv_out
    fan_in = conv_out.weight.shape[1] * conv_out.weight.shape[2] * conv_out.weight.shape[3]
    with torch.no_grad():
        noise = torch.randn(conv_out.weight.shape, generator=torch.Generator().manual_seed(5))
        conv_out.weight.copy_(noise / fan_in**0.5)
    return controlnet


def noise_scheduler() -> DDPMScheduler:
    """The training noise schedule (epsilon prediction)."""
    return DDPMScheduler(**NOISE_SCHEDULE, prediction_type="epsilon")


def assemble_pipeline(*, vae, unet, tokenizers, text_encoders) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline from the parts (the scheduler SDXL base ships with)."""
    scheduler = EulerDiscreteScheduler(
        **NOISE_SCHEDULE, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon"
    )
    # NOTE: SDXL base's scheduler_config.json carries these DDIM/PNDM keys too. Without them,
    # DDIMScheduler.from_config falls back to clip_sample=True and clips latents to [-1, 1]:
    # measured on this model, DDIM drew the asked digit 2 % of the time instead of 100 %.
    scheduler.register_to_config(
        clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoders[0],
        text_encoder_2=text_encoders[1],
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())
