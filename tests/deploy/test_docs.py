"""docs/configuration.md is generated from Settings and kept in sync; operator docs exist."""

from __future__ import annotations

import re
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


def _tracked_text_files() -> list[Path]:
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [
        ROOT / name
        for name in listed.split("\0")
        if name and (ROOT / name).is_file() and not name.startswith("generative_service/models/")
    ]


def test_nothing_cites_a_design_document_outside_the_repository():
    """The contract lives in the repo (docs/, README); the design notes it grew from do not."""
    cited = re.compile("DESIGN" + r"(\.md|\s*§)")
    found = []
    for path in _tracked_text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += [
            f"{path.relative_to(ROOT)}:{number}"
            for number, line in enumerate(text.splitlines(), 1)
            if cited.search(line)
        ]
    assert not found, f"cite docs/architecture.md (or another repo doc) instead: {found}"


def test_architecture_doc_lists_every_redis_key():
    """Every key of keys.py's table is in docs/architecture.md's data model."""
    from generative_service import keys

    table = keys.__doc__.split("written by", 1)[1]
    names = [
        re.split(r"\s{2,}| \(", line.strip())[0]
        for line in table.splitlines()
        if line.strip().startswith("P:")
    ]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert len(names) >= 20
    assert [name for name in names if f"`{name}`" not in doc] == []
