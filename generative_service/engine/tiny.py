"""The tiny random-weight SDXL bundle: the real architecture at toy size, for tests and development.

`build_tiny(root)` writes the bundle layout of `engine.paths` deterministically (fixed seeds) with
`save_pretrained`; the engine then loads it through the same `from_pretrained` code as real weights.
`ensure_tiny(cache_dir)` builds it once per cache directory, under a file lock so concurrent
processes neither race nor see half a bundle.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessor,
)

from generative_service.engine._quiet import quiet_progress_bars
from generative_service.engine.tokenizer import build_clip_tokenizer, clip_special_ids

SIZE = 64
TINY_VERSION = 1  # bump when the bundle changes, so caches built by older code are rebuilt
TEXT_DIM = 32
TIME_EMBED_DIM = 8
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SAMPLE_LORAS = {"tiny-style-a": (4, 101), "tiny-style-b": (8, 202)}  # name -> (rank, seed)
_SUBJECTS = ["cat", "dog", "house", "tree", "car", "flower", "mountain", "river", "robot", "bird"]
_STYLES = ["a photo of a", "a drawing of a", "a painting of a", "a handwritten", "a red", "a blue"]


def ensure_tiny(cache_dir: Path) -> Path:
    """Return CACHE_DIR/tiny, building it first if absent (file lock: one builder at a time)."""
    cache_dir = Path(cache_dir)
    root = cache_dir / "tiny"
    if _is_current(root):
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(root):  # another process may have built it meanwhile
            staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache_dir))
            try:
                build_tiny(staging)
                if root.exists():
                    shutil.rmtree(root)
                staging.rename(root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return root


def _is_current(root: Path) -> bool:
    """A complete bundle from this builder version (bundle.json is written last)."""
    try:
        return json.loads((root / "bundle.json").read_text()).get("tiny_version") == TINY_VERSION
    except (OSError, ValueError):
        return False


def build_tiny(root: Path) -> Path:
    """Write the tiny bundle into `root` (created if needed) and return `root`. Deterministic."""
    quiet_progress_bars()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pipe = _pipeline()
    pipe.save_pretrained(root / "pipeline", safe_serialization=True)
    for kind, seed in (("canny", 11), ("depth", 12)):
        _controlnet(pipe.unet, seed=seed).save_pretrained(root / f"controlnet-{kind}")
    _save_depth_estimator(root / "depth-estimator")
    (root / "loras").mkdir(exist_ok=True)
    for name, (rank, seed) in SAMPLE_LORAS.items():
        save_sample_lora(pipe.unet, root / "loras", name=name, rank=rank, seed=seed)
    info = {
        "name": "tiny",
        "tiny_version": TINY_VERSION,
        "default_size": SIZE,
        "prompt_hint": "random weights: any prompt gives coloured noise",
    }
    (root / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    (root / "MODEL_CARD.md").write_text(_MODEL_CARD)
    return root


def _corpus() -> list[str]:
    return [f"{style} {subject}" for style in _STYLES for subject in _SUBJECTS]


def _text_config(tokenizer, *, seed_offset: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2 + seed_offset,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        **clip_special_ids(tokenizer),
    )


def small_sdxl_unet(
    *,
    image_size: int,
    block_out_channels: tuple[int, int],
    norm_num_groups: int,
    text_dim: int,
    time_embed_dim: int,
) -> UNet2DConditionModel:
    """An SDXL-architecture UNet at toy width: `text_time` addition embedding, 1 layer per block,
    cross-attention on the two text encoders' concatenated states. The demo trainer uses it too."""
    return UNet2DConditionModel(
        sample_size=image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=2 * text_dim,  # penultimate states of both encoders, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_dim,  # 6 time ids + pooled
    )


def small_sdxl_vae(
    *,
    image_size: int,
    block_out_channels: tuple[int, int, int, int],
    norm_num_groups: int,
    scaling_factor: float,
) -> AutoencoderKL:
    """An AutoencoderKL with 3 downsamplings (scale factor 8, as SDXL) and 4 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        latent_channels=4,
        sample_size=image_size,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )


def _pipeline() -> StableDiffusionXLPipeline:
    tokenizer = build_clip_tokenizer(_corpus(), vocab_size=1000)
    tokenizer_2 = build_clip_tokenizer(_corpus(), vocab_size=1000)
    torch.manual_seed(0)
    unet = small_sdxl_unet(
        image_size=SIZE,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        text_dim=TEXT_DIM,
        time_embed_dim=TIME_EMBED_DIM,
    )
    torch.manual_seed(1)
    vae = small_sdxl_vae(
        image_size=SIZE,
        block_out_channels=(16, 16, 32, 32),
        norm_num_groups=8,
        scaling_factor=0.13025,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, seed_offset=0))
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, seed_offset=1))
    scheduler = EulerDiscreteScheduler(  # the scheduler config SDXL base ships with
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _controlnet(unet: UNet2DConditionModel, *, seed: int) -> ControlNetModel:
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(8, 16, 32, 32)
    )
    # NOTE: from_unet zero-initialises the output convolutions, so an untrained ControlNet would have
    # no effect at all; random outputs make conditioning visibly change the image.
    generator = torch.Generator().manual_seed(seed)
    zeroed = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
    zeroed += list(controlnet.controlnet_down_blocks)
    with torch.no_grad():
        for module in zeroed:
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return controlnet


def _save_depth_estimator(target: Path) -> None:
    torch.manual_seed(4)
    config = DPTConfig(
        image_size=SIZE,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
        use_auxiliary_head=False,
        head_in_index=-1,
    )
    DPTForDepthEstimation(config).eval().save_pretrained(target)
    processor = DPTImageProcessor(
        size={"height": SIZE, "width": SIZE},
        keep_aspect_ratio=False,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor.save_pretrained(target)


def save_sample_lora(
    unet: UNet2DConditionModel, directory: Path, *, name: str, rank: int, seed: int
) -> None:
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False
    )
    torch.manual_seed(seed)
    unet.add_adapter(config, adapter_name=name)
    state = get_peft_model_state_dict(unet, adapter_name=name)
    unet.delete_adapters(name)
    # NOTE: no adapter metadata: safetensors writes a metadata map in hash order, which would make
    # the file differ between builds. Rank and targets follow from the tensors; alpha == rank.
    StableDiffusionXLPipeline.save_lora_weights(
        directory,
        unet_lora_layers=state,
        weight_name=f"{name}.safetensors",
    )


_MODEL_CARD = """# tiny (random weights)

A toy-size model with the Stable Diffusion XL architecture and **random weights**, built
deterministically by `generative_service.engine.tiny.build_tiny` (`gensvc models build-tiny DIR`).

- UNet: SDXL `text_time` conditioning, channels (32, 64), 64x64 images (8x8 latents).
- Two CLIP text encoders (CLIPTextModel + CLIPTextModelWithProjection, width 32) with byte-level
  BPE tokenizers learned locally from a 60-prompt corpus (`model_max_length=77`).
- VAE: AutoencoderKL, scale factor 8. Canny and depth ControlNets with randomised output layers.
- Depth estimator: DPT (transformers) at toy size. Sample LoRAs: `tiny-style-a` (rank 4),
  `tiny-style-b` (rank 8), UNet attention projections.

It draws coloured noise. It exists so that every code path (batching, samplers, LoRA, ControlNet,
previews, cancellation) runs on a CPU in seconds. Licence: Apache-2.0, like the project.
"""
