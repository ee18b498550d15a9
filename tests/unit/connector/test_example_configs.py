"""Every example config loads, and the env file fills what the environment lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_config
from connector.config_loader import environment_with, read_env_file
from core.errors import ConfigError
from tests.support.examples import EXAMPLE_ENV, REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    config = load_config(path, env=EXAMPLE_ENV)
    assert config.source is not None or config.sink is not None
    assert "hunter2" not in config.model_dump_json()


def test_env_file_values_fill_gaps_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "dev.env"
    env_file.write_text("# written by cdc dev up\nCDC_A=from-file\nexport CDC_B='quoted'\n\nCDC_C=file\n")
    assert read_env_file(env_file) == {"CDC_A": "from-file", "CDC_B": "quoted", "CDC_C": "file"}
    monkeypatch.setenv("CDC_C", "from-env")
    merged = environment_with(env_file)
    assert merged["CDC_A"] == "from-file"
    assert merged["CDC_C"] == "from-env"


def test_env_file_rejects_garbage(tmp_path: Path) -> None:
    env_file = tmp_path / "dev.env"
    env_file.write_text("CDC_A=1\nnot a pair\n")
    with pytest.raises(ConfigError, match=r"dev.env:2: expected KEY=value"):
        read_env_file(env_file)
