"""The `cdc` command line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from connector.errors import ConnectorError
from connector.stack.cli import app as dev_app
from schemas.cli import app as schemas_app

app = typer.Typer(
    name="cdc",
    help="Stream every row change from PostgreSQL through Kafka into a destination database, exactly once in effect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Show the resolved config or the config file's JSON Schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(dev_app, name="dev")
app.add_typer(schemas_app, name="schemas")

_state: dict[str, bool] = {"debug": False}

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


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """cdc-connector: PostgreSQL logical replication -> Kafka (Avro, Schema Registry) -> destination database."""
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@config_app.command("show")
def config_show(config: ConfigPath) -> None:
    """Print the resolved config (variables interpolated, defaults filled) with secrets redacted."""
    from connector.config import load_config, redacted

    loaded = guarded(lambda: load_config(config))
    typer.echo(json.dumps(redacted(loaded), indent=2))


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (for editors and CI checks)."""
    from connector.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
