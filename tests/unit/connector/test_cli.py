"""`cdc --help` and every subcommand's `--help` work; the contract's commands exist."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from connector.cli import app

pytestmark = pytest.mark.unit

# The commands users and scripts rely on (README.md, docs/operations.md); each must exist.
CONTRACT_COMMANDS = [
    ("run",),
    ("validate",),
    ("config", "show"),
    ("config", "schema"),
    ("status",),
    ("dev", "up"),
    ("dev", "down"),
    ("dev", "status"),
]


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    # Groups have `commands` (typer may use its own copy of click, so no isinstance check).
    if getattr(command, "commands", None):
        for name, sub in sorted(command.commands.items()):
            paths.extend(command_paths(sub, (*prefix, name)))
    return paths


ALL_PATHS = command_paths(typer.main.get_command(app))


def test_root_help_lists_the_command_groups() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("run", "validate", "config", "status", "dev"):
        assert name in result.output


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: " ".join(p) or "cdc")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Traceback" not in result.output


def command_at(path: tuple[str, ...]) -> Any:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: " ".join(p) or "cdc")
def test_help_shows_no_value_after_a_flag(path: tuple[str, ...]) -> None:
    flags = ["--help"] + [p.opts[0] for p in command_at(path).params if getattr(p, "is_flag", False)]
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for flag in flags:
        assert flag in result.output
        assert not re.search(rf"{re.escape(flag)}\b[\s│]*(<bool>|BOOLEAN)", result.output), result.output


@pytest.mark.parametrize("path", CONTRACT_COMMANDS, ids=" ".join)
def test_contract_command_exists(path: tuple[str, ...]) -> None:
    assert path in ALL_PATHS
