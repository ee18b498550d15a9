"""What every `cdc` command shares: the global options, config loading and the one-line error exit.

Its own module so that command groups (the schema checks here, the development stack's `cdc dev` plugged in
by entry point) reach these without importing the root command, which imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from connector.config import ConnectorConfig, load_config
from connector.config_loader import environment_with
from core.errors import ConnectorError
from core.logs import scrub

_state: dict[str, Any] = {"debug": False, "env_file": None}
DEFAULT_ENV_FILE = Path(".cdc/dev.env")

ConfigPath = Annotated[
    Path, typer.Argument(help="Connector config file (YAML).", exists=False, dir_okay=False, show_default=False)
]

T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def guarded(body: Callable[[], T]) -> T:
    """Run a command body; a ConnectorError becomes one line on stderr and exit 1 (traceback with --debug)."""
    try:
        return body()
    except ConnectorError as exc:
        if _state["debug"]:
            raise
        fail(str(exc))
        raise AssertionError("unreachable") from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _state["debug"]:
            raise
        fail(f"unexpected {type(exc).__name__}: {scrub(str(exc))} (rerun with --debug for the traceback)")
        raise AssertionError("unreachable") from None



def load(config: Path) -> ConnectorConfig:
    """Load a config with ${VAR}s from the environment, then the env file."""
    return load_config(config, env=environment_with(_state["env_file"]))
