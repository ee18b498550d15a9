"""`cdc schemas check`: derive the schemas the source would produce and check them against the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from connector.cli_common import load
from core.errors import ConfigError, ConnectorError
from schemas.check import check_against_registry
from schemas.registry import SchemaRegistry
from sources.postgres.schema_preview import derive_schemas_after

app = typer.Typer(help="Schema Registry compatibility checks (usable as a CI gate).", no_args_is_help=True)


@app.callback()
def schemas() -> None:
    """Schema Registry compatibility checks (usable as a CI gate)."""


@app.command("check")
def check(
    config: Annotated[
        Path, typer.Argument(help="Connector config file (YAML) with a `source` section.", dir_okay=False)
    ],
    migration: Annotated[
        Path | None,
        typer.Option("--migration", help="SQL file applied in a transaction that is rolled back before the check.",
                     dir_okay=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable report.")] = False,
    lock_timeout_ms: Annotated[
        int, typer.Option("--lock-timeout-ms", help="Give up when the migration waits this long for a lock.")
    ] = 5000,
) -> None:
    """Check the schemas the source would produce (now, or after --migration) against the registry.

    Each table's `{topic}-key` / `{topic}-value` schema is checked against the subject's latest version at
    the configured compatibility level (set on existing subjects, as the connector itself would do).
    Exit 1 with one line per incompatible subject; 0 when every subject is compatible or new.
    """
    try:
        loaded = load(config)
        if loaded.source is None:
            raise ConfigError(f"{config}: no `source` section", hint="schemas are derived from the source's tables")
        script = None
        if migration is not None:
            try:
                script = migration.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read migration {migration}: {exc.strerror}") from None
        derived = derive_schemas_after(
            loaded.source.dsn.get_secret_value(), loaded.source, script, lock_timeout_ms=lock_timeout_ms
        )
        with SchemaRegistry(loaded.schema_registry) as registry:
            checks = check_against_registry(registry, derived)
    except ConnectorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    incompatible = [c for c in checks if not c.compatible]
    if as_json:
        report = {
            "compatible": not incompatible,
            "migration": str(migration) if migration else None,
            "subjects": [c.as_json() for c in checks],
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        for item in incompatible:
            typer.echo(item.line())
        summary = f"{len(checks)} subjects checked, {len(incompatible)} incompatible"
        typer.echo(summary, err=bool(incompatible))
    raise typer.Exit(1 if incompatible else 0)
