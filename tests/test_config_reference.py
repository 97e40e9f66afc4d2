from pathlib import Path

from vla_edge.commands.config import example_toml, reference_markdown
from vla_edge.config import load_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_docs_configuration_is_current():
    assert reference_markdown() in DOCS.read_text(encoding="utf-8"), (
        "docs/configuration.md is stale: regenerate it with `vla-edge config reference`"
    )


def test_example_file_round_trips(tmp_path):
    path = tmp_path / "example.toml"
    path.write_text(example_toml())
    settings = load_settings(path)
    assert settings.policy.precision == "int8"
