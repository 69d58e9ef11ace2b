"""Every request rule lives in generative_service/rules.py; the schema and /v1/models read it."""

from __future__ import annotations

import ast
from pathlib import Path

from generative_service import rules
from generative_service.api.routes.models import settings_info
from generative_service.schemas import GenerationRequest, LoraSpec
from generative_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# Values that are rules: a module other than rules.py that spells one of them out as a literal
# keeps a second copy of the rule (the LoRA name pattern, the step limit, the prompt length).
RULE_LITERALS = {rules.LORA_NAME_PATTERN, rules.MAX_STEPS, rules.MAX_PROMPT_CHARS}


def test_the_wire_schema_declares_the_rules():
    schema = GenerationRequest.model_json_schema()
    fields = schema["properties"]
    assert fields["steps"]["maximum"] == rules.MAX_STEPS
    assert fields["steps"]["default"] == rules.DEFAULT_STEPS
    assert fields["prompt"]["maxLength"] == rules.MAX_PROMPT_CHARS
    assert fields["num_images"]["maximum"] == rules.MAX_IMAGES
    guidance = next(o for o in fields["guidance_scale"]["anyOf"] if o.get("type") == "number")
    assert guidance["maximum"] == rules.MAX_GUIDANCE
    assert fields["guidance_scale"]["default"] is None  # the model's own (bundle.json)
    lora = LoraSpec.model_json_schema()["properties"]["name"]
    assert (lora["pattern"], lora["maxLength"]) == (rules.LORA_NAME_PATTERN, rules.LORA_NAME_MAX)


def test_one_limits_block_for_v1_models():
    settings = Settings(max_side=1024, max_batch_images=2)
    limits = settings_info(settings)["limits"]
    assert limits == rules.limits(settings)
    assert limits["max_steps"] == 150 and limits["max_images_per_job"] == 2
    assert limits["max_side"] == 1024 and limits["side_multiple"] == 8


def test_rule_problems():
    assert rules.side_problem(64) is None
    assert rules.side_problem(56) == "must be at least 64"
    assert rules.side_problem(65) == "must be a multiple of 8, got 65"
    assert rules.side_problem(4096, 2048) == "must be at most 2048 (GENSVC_MAX_SIDE), got 4096"
    assert rules.steps_problem(151) and rules.steps_problem(150) is None
    assert rules.seed_problem(2**63) and rules.seed_problem(None) is None
    assert rules.lora_name_ok("a" * 128) and not rules.lora_name_ok("a" * 129)
    assert not rules.lora_name_ok(".hidden")


def test_no_rule_is_spelled_out_twice():
    found = []
    for folder in ("generative_service", "workers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "generative_service" / "rules.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and type(node.value) in (int, str):
                    if node.value in RULE_LITERALS:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, f"request rules spelled out outside rules.py: {found}"
