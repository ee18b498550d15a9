"""`cdc dev` as mounted into `cdc`: its options, and its behaviour without any service running."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from connector.cli import app

pytestmark = pytest.mark.unit


def test_dev_up_has_every_port_option() -> None:
    up = typer.main.get_command(app).commands["dev"].commands["up"]  # type: ignore[attr-defined]
    flags = {opt for param in up.params for opt in param.opts}
    assert flags >= {"--home", "--pg-port", "--kafka-port", "--kafka-controller-port", "--registry-port",
                     "--registry-management-port", "--free-ports", "--timeout"}


def test_dev_status_of_an_empty_home_says_not_started(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dev", "status", "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert "stopped" in result.output


def test_dev_down_of_an_empty_home_stops_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dev", "down", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "nothing was running" in result.output


def test_dev_home_comes_from_cdc_home(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dev", "down"], env={"CDC_HOME": str(tmp_path / "elsewhere")})
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "elsewhere") in result.output
