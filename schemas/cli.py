"""`cdc schemas check`: derive the schemas the source would produce and check them against the registry."""

from __future__ import annotations

import typer

app = typer.Typer(help="Schema Registry compatibility checks (usable as a CI gate).", no_args_is_help=True)
