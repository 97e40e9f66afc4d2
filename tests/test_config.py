from pathlib import Path

import pytest

from vla_edge.config import load_settings
from vla_edge.errors import ConfigError


def test_defaults_load():
    settings = load_settings()
    assert settings.operator.host == "127.0.0.1"
    assert 3 <= settings.task.checkpoint_every <= 5


def test_toml_file_and_env_override(tmp_path: Path, monkeypatch):
    path = tmp_path / "vla-edge.toml"
    path.write_text('[policy]\nprecision = "fp32"\nnum_samples = 4\n[camera]\nsource = "0"\n')
    monkeypatch.setenv("VLA_EDGE_POLICY__PRECISION", "int4")
    settings = load_settings(path)
    assert settings.policy.precision == "int4"
    assert settings.policy.num_samples == 4
    assert settings.camera.source == "0"


def test_typo_is_named(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[camera]\nwidht = 64\n")
    with pytest.raises(ConfigError, match=r"camera\.widht"):
        load_settings(path)


def test_bad_value_is_named(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[task]\ncheckpoint_every = 9\n")
    with pytest.raises(ConfigError, match=r"task\.checkpoint_every.*got 9"):
        load_settings(path)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[camera\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
