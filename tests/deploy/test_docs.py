"""docs/configuration.md is generated from Settings and kept in sync; operator docs exist."""

from __future__ import annotations

from pathlib import Path

from generative_service import config_doc
from generative_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_up_to_date():
    committed = (ROOT / config_doc.DOC_PATH).read_text()
    assert committed == config_doc.render(), (
        "docs/configuration.md is stale: run `make openapi` (or python -m generative_service.config_doc)"
    )


def test_every_setting_is_documented_with_its_description():
    text = config_doc.render()
    for name, field in Settings.model_fields.items():
        row = next(
            (line for line in text.splitlines() if line.startswith(f"| `GENSVC_{name.upper()}` |")),
            None,
        )
        assert row is not None, f"GENSVC_{name.upper()} missing"
        assert field.description and field.description.split("`")[0][:20] in row.replace("\\|", "|")


def test_check_mode_fails_on_a_stale_file(tmp_path):
    path = tmp_path / "configuration.md"
    assert config_doc.main(["--path", str(path)]) == 0
    assert config_doc.main(["--check", "--path", str(path)]) == 0
    path.write_text(path.read_text().replace("GENSVC_REDIS_URL", "GENSVC_REDIS_URI"))
    assert config_doc.main(["--check", "--path", str(path)]) == 1


def test_defaults_are_written_as_environment_values():
    text = config_doc.render()
    assert "| `GENSVC_MAX_BATCH_IMAGES` | integer (>= 1, <= 16) | `4` |" in text
    assert "`5,300,1800,7200,18000,36000,36000`" in text  # list default, comma-separated
    assert "one of: `blur`, `block`, `off`" in text


def test_operations_guide_covers_what_operators_need():
    guide = (ROOT / "docs" / "operations.md").read_text()
    for topic in (
        "docker compose",
        "GENSVC_QUEUE_ROUTES",
        "GENSVC_QUEUES",
        "device_ids",
        "/metrics",
        "/readyz",
        "configuration.md",
    ):
        assert topic in guide, topic
