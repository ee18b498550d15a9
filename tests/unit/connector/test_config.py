"""Config errors a user can make, each reported on one line with the key path and line, never a secret."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.config import load_config, redacted
from connector.config_loader import load_yaml
from core.errors import ConfigError

pytestmark = pytest.mark.unit

PASSWORD = "s3cr3t-Pa55"
ENV = {
    "CDC_SOURCE_DSN": f"postgresql://app:{PASSWORD}@127.0.0.1:5432/source",
    "CDC_TARGET_DSN": f"postgresql://app:{PASSWORD}@127.0.0.1:5432/target",
    "CDC_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "CDC_SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081/apis/ccompat/v7",
}
BOOTSTRAP_LINE = "  bootstrap_servers: ${CDC_KAFKA_BOOTSTRAP}\n"
VALID = """\
name: unit
kafka:
  bootstrap_servers: ${CDC_KAFKA_BOOTSTRAP}
schema_registry:
  url: ${CDC_SCHEMA_REGISTRY_URL}
source:
  dsn: ${CDC_SOURCE_DSN}
  topic_prefix: unit
  slot:
    name: cdc_unit
  publication:
    name: cdc_unit
sink:
  dsn: ${CDC_TARGET_DSN}
  topics_regex: '^unit\\..*'
transforms:
  source: []
  sink: []
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.yaml"
    path.write_text(dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env=ENV if env is None else env)
    message = str(caught.value)
    assert "\n" not in message
    assert PASSWORD not in message
    return message


def test_valid_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), env=ENV)
    assert config.name == "unit"
    assert config.source is not None and config.source.slot.name == "cdc_unit"
    assert config.source.dsn.get_secret_value() == ENV["CDC_SOURCE_DSN"]


def test_unknown_key_names_its_path_and_line(tmp_path: Path) -> None:
    text = VALID.replace("    name: cdc_unit\n  publication:", "    name: cdc_unit\n    nmae: typo\n  publication:")
    message = error_of(tmp_path, text)
    line = text.splitlines().index("    nmae: typo") + 1
    assert f"source.slot.nmae (line {line}): unknown key" in message


def test_unknown_top_level_section(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + "sinks: {}\n")
    assert f"sinks (line {len(VALID.splitlines()) + 1}): unknown key" in message


def test_bad_type_names_key_and_line(tmp_path: Path) -> None:
    text = VALID.replace(BOOTSTRAP_LINE, "  bootstrap_servers: x\n  topic_partitions: many\n")
    message = error_of(tmp_path, text)
    assert "kafka.topic_partitions (line 4)" in message
    assert "integer" in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID.replace("  topic_prefix: unit\n", ""))
    assert "source.topic_prefix" in message
    assert "required" in message


def test_missing_environment_variable_names_variable_and_key(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "CDC_KAFKA_BOOTSTRAP"}
    message = error_of(tmp_path, VALID, env)
    assert "CDC_KAFKA_BOOTSTRAP is not set" in message
    assert "kafka.bootstrap_servers (line 3)" in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, 9000), ({"PORT": "9100"}, 9100), ({"PORT": ""}, 9000)],
    ids=["unset", "set", "empty"],
)
def test_default_applies_when_variable_unset_or_empty(env: dict[str, str], expected: int) -> None:
    document = load_yaml("server:\n  port: ${PORT:-9000}\n  host: h-${HOST_SUFFIX:-x}\n", env=env)
    assert document.data["server"]["port"] == expected
    assert document.data["server"]["host"] == "h-x"


def test_dollar_dollar_is_a_literal_dollar() -> None:
    assert load_yaml("name: a$$b\n", env={}).data["name"] == "a$b"


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + "name: again\n")
    assert f"line {len(VALID.splitlines()) + 1}: duplicate key 'name' (first at line 1)" in message


def test_invalid_value_next_to_a_password_never_echoes_it(tmp_path: Path) -> None:
    text = VALID.replace("    name: cdc_unit\n  publication:", "    name: Not-Valid!\n  publication:")
    text = text.replace("${CDC_SOURCE_DSN}", ENV["CDC_SOURCE_DSN"])
    message = error_of(tmp_path, text)
    assert "source.slot.name" in message


def test_password_under_an_unknown_key_is_not_echoed(tmp_path: Path) -> None:
    text = VALID.replace(
        "  topic_prefix: unit\n", f"  password_dsn: postgresql://u:{PASSWORD}@h/db\n  topic_prefix: unit\n"
    )
    message = error_of(tmp_path, text)
    assert "source.password_dsn" in message


def test_secret_typed_where_a_number_belongs_is_not_echoed(tmp_path: Path) -> None:
    text = VALID.replace(BOOTSTRAP_LINE, f"  bootstrap_servers: x\n  topic_partitions: {PASSWORD}\n")
    assert "kafka.topic_partitions" in error_of(tmp_path, text)


def test_redacted_hides_dsns_and_secret_properties(tmp_path: Path) -> None:
    text = VALID.replace(
        BOOTSTRAP_LINE,
        f"  bootstrap_servers: x\n  properties:\n    sasl.password: {PASSWORD}\n",
    )
    shown = str(redacted(load_config(write(tmp_path, text), env=ENV)))
    assert PASSWORD not in shown
    assert "**********" in shown


def test_config_show_never_prints_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .cdc/dev.env of a developer's stack leaks in
    path = write(tmp_path, VALID)
    result = CliRunner().invoke(app, ["config", "show", str(path)], env=ENV)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert '"topic_prefix": "unit"' in result.output


def test_config_show_error_is_one_line_without_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = VALID.replace("${CDC_SOURCE_DSN}", ENV["CDC_SOURCE_DSN"]).replace("cdc_unit\n  pub", "BAD!\n  pub")
    path = write(tmp_path, text)
    result = CliRunner().invoke(app, ["config", "show", str(path)], env=ENV)
    assert result.exit_code == 1
    assert PASSWORD not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "source.slot.name" in lines[0]
    assert "Traceback" not in result.output
