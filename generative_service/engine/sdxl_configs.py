"""The Stable Diffusion XL base 1.0 architecture, as constructor arguments (no weights).

The published component configs of stabilityai/stable-diffusion-xl-base-1.0, written out so the
service can assemble a single-file checkpoint offline and the device check can build the real
architecture with random weights. `write_pipeline_configs` turns them into a diffusers-layout
folder (configs and tokenizers, no weights) that `from_single_file(config=...)` reads.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=1024,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    scaling_factor=0.13025,
    force_upcast=True,  # the stock SDXL VAE overflows in float16
)
TEXT_ENCODER: dict[str, Any] = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
    hidden_act="quick_gelu",
    vocab_size=49408,
    max_position_embeddings=77,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
TEXT_ENCODER_2: dict[str, Any] = dict(
    TEXT_ENCODER,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
    hidden_act="gelu",
)
SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
)
_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# CLIP's byte-pair vocabulary: the open_clip package ships it (bpe_simple_vocab_16e6.txt.gz).
_CLIP_MERGES = 49152 - 256 - 2


def write_pipeline_configs(root: Path, *, tokenizers: bool = True) -> Path:
    """Write model_index.json and every component's config (and tokenizers) into `root`.

    Raises:
        FileNotFoundError: `tokenizers` is set and CLIP's vocabulary is not installed.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2))
    with torch.device("meta"):  # the full config with every default, no memory for weights
        UNet2DConditionModel(**UNET).save_config(root / "unet")
        AutoencoderKL(**VAE).save_config(root / "vae")
    EulerDiscreteScheduler(**SCHEDULER).save_config(root / "scheduler")
    for name, kwargs in (("text_encoder", TEXT_ENCODER), ("text_encoder_2", TEXT_ENCODER_2)):
        arch = "CLIPTextModel" if name == "text_encoder" else "CLIPTextModelWithProjection"
        CLIPTextConfig(**kwargs, architectures=[arch]).save_pretrained(root / name)
    if tokenizers:
        write_clip_tokenizers(root)
    return root


def write_clip_tokenizers(root: Path) -> None:
    """tokenizer/ and tokenizer_2/ with CLIP's real vocabulary (as SDXL base ships them)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tokenizer = CLIPTokenizer(
            vocab=vocab,
            merges=merges,
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token=pad,
            model_max_length=77,
        )
        tokenizer.save_pretrained(root / name)


def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-token vocabulary and its merges, from the file open_clip ships.

    Raises:
        FileNotFoundError: open_clip (`pip install open-clip-torch`) is not installed.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "CLIP's vocabulary comes from the open_clip package: pip install open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _CLIP_MERGES]]
    symbols = list(_byte_symbols().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def _byte_symbols() -> dict[int, str]:
    """Byte -> printable symbol, in the order CLIP's vocabulary lists them (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items(), key=lambda item: (item[0] not in printable, item[0])))
