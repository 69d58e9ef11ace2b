"""Does a LoRA file fit the served base model? Checked at upload, in the gateway, without torch.

A GPU worker publishes the weight shape of every layer a LoRA can target (`Keys.model_layers`, written
from `engine.lora.target_layers`). An upload is accepted only when each of its tensors names such
a layer and has the shape that layer needs:

    Linear weight [out, in]        -> lora_A [r, in],         lora_B [out, r]
    Conv2d weight [out, in, kh, kw] -> lora_A [r, in, kh, kw], lora_B [out, r, 1, 1]

Key formats understood: diffusers/peft (`unet.<module>.lora_A.weight`, `.lora_B.weight`, the
older `.lora.down.weight`/`.lora.up.weight`; `text_encoder.` and `text_encoder_2.` likewise) and
kohya with diffusers module names (`lora_unet_<module_with_underscores>.lora_down.weight`,
`lora_te1_`, `lora_te2_`, `.alpha`). Anything else is refused: the service cannot show it loads.
"""

from __future__ import annotations

import re

from generative_service.errors import LoraError

PARTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
                  "lora_te_": "text_encoder"}  # fmt: skip
_ROLE = re.compile(
    r"^(?P<module>.+?)\.(?P<role>lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)"
    r"(?:\.[A-Za-z0-9_-]+)?\.weight$"
)
_DOWN = {"lora_A", "lora.down", "lora_down"}


def check_fit(
    shapes: dict[str, list[int]], layers: dict[str, dict[str, list[int]]], *, model: str
) -> None:
    """Raise LoraError('file') unless every tensor of the file fits a layer of `layers`."""
    underscored = {
        part: {name.replace(".", "_"): name for name in mods} for part, mods in layers.items()
    }
    pairs: dict[tuple[str, str], dict[str, list[int]]] = {}
    problems: list[str] = []
    for key, shape in sorted(shapes.items()):
        try:
            part, module, role = _parse(key, underscored)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if role == "alpha":
            if len(shape) > 1 or (shape and shape[0] != 1):
                problems.append(f"{key}: an alpha is one number, got shape {shape}")
            continue
        if module not in layers.get(part, {}):
            problems.append(f"{key}: the model has no layer {part}.{module}")
            continue
        pairs.setdefault((part, module), {})["down" if role in _DOWN else "up"] = shape
    for (part, module), pair in pairs.items():
        problems += _pair_problems(f"{part}.{module}", pair, layers[part][module])
    if problems:
        raise LoraError(
            "file",
            f"does not fit the served model {model!r}: {problems[0]} ({len(problems)} problem(s)); "
            "is it made for another base model?",
            details={"problems": problems[:20]},
        )


def _parse(key: str, underscored: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    for prefix, part in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            stem, _, rest = key[len(prefix) :].partition(".")
            module = underscored.get(part, {}).get(stem)
            if module is None:
                raise ValueError(f"{key}: the model has no layer {part} {stem!r}")
            if rest == "alpha":
                return part, module, "alpha"
            if rest not in ("lora_down.weight", "lora_up.weight"):
                raise ValueError(f"{key}: not a kohya lora_down/lora_up weight or alpha")
            return part, module, rest.removesuffix(".weight")
    part, _, rest = key.partition(".")
    if part not in PARTS:
        part, rest = "unet", key  # peft files of a bare UNet
    if rest.endswith(".alpha"):
        return part, rest.removesuffix(".alpha"), "alpha"
    match = _ROLE.match(rest)
    if match is None:
        raise ValueError(f"{key}: not a LoRA weight name this service can load")
    return part, match["module"], match["role"]


def _pair_problems(name: str, pair: dict[str, list[int]], weight: list[int]) -> list[str]:
    down, up = pair.get("down"), pair.get("up")
    if down is None or up is None:
        return [f"{name}: lora_{'B' if down is not None else 'A'} weight is missing"]
    out_features, in_features, *kernel = weight
    want_down = [down[0], in_features, *kernel] if kernel else [down[0], in_features]
    want_up = [out_features, down[0], 1, 1] if kernel else [out_features, down[0]]
    problems = []
    if list(down) != want_down:
        problems.append(f"{name}: lora_A has shape {down}, the layer needs {want_down}")
    if list(up) != want_up and not (kernel and list(up) == [out_features, down[0]]):
        problems.append(f"{name}: lora_B has shape {up}, the layer needs {want_up}")
    return problems
