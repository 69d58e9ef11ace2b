"""Write an SDXL pipeline as one original-layout checkpoint (what AUTOMATIC1111 and ComfyUI load).

The inverse of diffusers' single-file conversion: UNet under `model.diffusion_model.`, VAE under
`first_stage_model.`, CLIP ViT-L under `conditioner.embedders.0.transformer.` and the OpenCLIP
encoder under `conditioner.embedders.1.model.` (fused q/k/v, transposed projection). Used to give
the models this project trains to tools that take single files, and by the tests to check that
`GENSVC_MODEL=/path/model.safetensors` loads exactly what was saved.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_OPENCLIP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def save_single_file(pipe, path: Path) -> Path:
    """Save `pipe` (a StableDiffusionXLPipeline) as one `.safetensors` checkpoint at `path`."""
    tensors: dict[str, torch.Tensor] = {}
    tensors |= _prefixed("model.diffusion_model.", unet_to_ldm(pipe.unet))
    tensors |= _prefixed("first_stage_model.", vae_to_ldm(pipe.vae))
    tensors |= _prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(pipe.text_encoder))
    tensors |= _prefixed("conditioner.embedders.1.model.", open_clip_to_ldm(pipe.text_encoder_2))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights under the original `input_blocks`/`output_blocks` names."""
    state = unet.state_dict()
    per_block = unet.config.layers_per_block
    renames = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(len(unet.down_blocks)):
        for j in range(per_block):
            index = 1 + i * (per_block + 1) + j
            renames[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            renames[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        renames[f"down_blocks.{i}.downsamplers.0.conv."] = (
            f"input_blocks.{1 + i * (per_block + 1) + per_block}.0.op."
        )
    for i, block in enumerate(unet.up_blocks):
        for j in range(per_block + 1):
            index = i * (per_block + 1) + j
            renames[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            renames[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
        slot = 2 if getattr(block, "attentions", None) else 1
        renames[f"up_blocks.{i}.upsamplers.0.conv."] = (
            f"output_blocks.{i * (per_block + 1) + per_block}.{slot}.conv."
        )
    out = {}
    for key, value in state.items():
        new = _rename_prefix(key, renames)
        if ".resnets." in key or key.startswith("mid_block.resnets"):
            new = _rename_inside(new, _RESNET)
        out[new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights under the original `encoder.down.N.block.M` names."""
    count = len(vae.config.block_out_channels)
    renames = {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    }
    for part in ("encoder", "decoder"):
        renames[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        renames[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        renames[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(count):
        renames[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        renames[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        renames[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{count - 1 - i}.block."
        renames[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{count - 1 - i}.upsample."
    out = {}
    for key, value in vae.state_dict().items():
        new = _rename_prefix(key, renames).replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            new = _rename_inside(new, _VAE_ATTENTION)
            if new.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # the original uses 1x1 convolutions
        out[new] = value
    return out


def clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIPTextModel weights as the original checkpoints keep them (`text_model.` included)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        out[key if key.startswith("text_model.") else f"text_model.{key}"] = value
    return out


def open_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection weights in OpenCLIP's layout (fused q/k/v per layer)."""
    state = {
        key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()
    }
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        source, target = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{source}self_attn.{name}_proj.{kind}") for name in "qkv"]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(parts)
    for key, value in state.items():
        if key.startswith("encoder.layers."):
            layer_key = key.replace("encoder.layers.", "transformer.resblocks.", 1)
            out[_rename_inside(layer_key, _OPENCLIP)] = value
        elif not key.endswith("position_ids"):
            raise ValueError(f"unexpected text encoder weight {key}")
    return out


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in tensors.items()}


def _rename_prefix(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _rename_inside(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        key = key.replace(f".{old}.", f".{new}.")
    return key
