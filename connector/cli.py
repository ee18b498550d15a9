"""The `cdc` command line: the root command and its runtime commands.

Command groups from outside the runtime (the development stack's `cdc dev`) plug in through the `cdc.commands`
entry-point group, so the runtime never imports the tooling and an image without it still runs.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from connector import schema_cli
from connector.cli_common import DEFAULT_ENV_FILE, ConfigPath, _state, fail, guarded, load
from connector.config import json_schema, redacted
from connector.pipeline import Pipeline, Side, build_components, build_source
from connector.preflight import check_kafka, check_registry
from connector.split import SinkProcess, wants_split
from connector.status import gather, render
from core import logs
from sinks.base import Sink
from sources.base import Source
from sources.postgres.incremental import configured_signal_table, send_signal, snapshot_signal_data, table_ref
from sources.postgres.incremental import follow as follow_snapshot
from sources.postgres.run_parts import connect
from sources.postgres.selection import publication_tables
from sources.postgres.slots import StateStore
from sources.postgres.snapshot import ProgressReporter

app = typer.Typer(
    name="cdc",
    help="Stream every row change from PostgreSQL through Kafka into a destination database, exactly once in effect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Show the resolved config or the config file's JSON Schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(schema_cli.app, name="schemas")

@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="KEY=value file whose values fill ${VAR} in configs when the environment lacks them "
            "[default: .cdc/dev.env when it exists, as `cdc dev up` writes it]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """cdc-connector: PostgreSQL logical replication -> Kafka (Avro, Schema Registry) -> destination database."""
    _state["debug"] = debug
    _state["env_file"] = env_file if env_file is not None else (DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.exists() else None)
    logs.configure("DEBUG" if debug else "INFO")


@config_app.command("show")
def config_show(config: ConfigPath) -> None:
    """Print the resolved config (variables interpolated, defaults filled) with secrets redacted."""
    loaded = guarded(lambda: load(config))
    typer.echo(json.dumps(redacted(loaded), indent=2))


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (for editors and CI checks)."""
    typer.echo(json.dumps(json_schema(), indent=2))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


Only = Annotated[
    str | None,
    typer.Option("--only", help="Run just one side of a config that has both: `source` or `sink`.", show_default=False),
]


def _only(value: str | None) -> Literal["source", "sink"] | None:
    if value not in (None, "source", "sink"):
        fail(f"--only takes `source` or `sink`, not {value!r}")
    return value  # type: ignore[return-value]


Processes = Annotated[
    str | None,
    typer.Option(
        "--processes",
        help="`1`: source and sink on threads of one process; `2`: the sink in a child process (a core each); "
        "`auto`: 2 on 2+ CPUs of its own (a container's limit) or 4+ shared. Overrides the config's `processes`.",
        show_default=False,
    ),
]


@app.command("run")
def run(config: ConfigPath, only: Only = None, processes: Processes = None) -> None:
    """Run the pipeline CONFIG describes (its source and/or sink) until SIGTERM/SIGINT.

    Serves /healthz, /readyz, /metrics and /status (see the `server` section). Exits 0 after a clean stop,
    1 when a component fails, a service stays unreachable for `retry.give_up_after_s`, or it is stopped while
    still retrying (the cause and the fix on one line; see docs/operations.md).
    """
    side = _only(only)
    if processes not in (None, "auto", "1", "2"):
        fail(f"--processes takes `auto`, `1` or `2`, not {processes!r}", code=2)

    def body() -> int:
        loaded = load(config)
        level = "DEBUG" if _state["debug"] else loaded.logging.level
        logs.configure(level, loaded.logging.format)
        if processes == "2" and (side is not None or loaded.source is None or loaded.sink is None):
            fail("--processes 2 runs the sink beside the source: it needs a config with both and no --only", code=2)
        if wants_split(loaded, side, processes):
            components: dict[Side, Source | Sink] = {
                "source": build_source(loaded),
                "sink": SinkProcess(loaded, log_level=level),
            }
            return Pipeline(loaded, components=components).run()
        return Pipeline(loaded, side).run()

    raise typer.Exit(guarded(body))


@app.command("validate")
def validate(config: ConfigPath, only: Only = None) -> None:
    """Check the file and every connection and prerequisite; print each problem with its fix. Exit 1 on any problem."""
    side = _only(only)

    def body() -> list[Any]:
        loaded = load(config)
        kafka_problems = check_kafka(loaded)[0]
        problems = list(kafka_problems) + list(check_registry(loaded)[0])
        problems.extend(Pipeline(loaded, side).validate(kafka=not kafka_problems))
        return problems

    problems = guarded(body)
    if problems:
        for problem in problems:
            typer.echo(f"problem: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{config}: ok")


@app.command("status")
def status(
    config: ConfigPath,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (stable keys).")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for each service before naming it unreadable.")
    ] = 10.0,
) -> None:
    """Slot state and lag, snapshot progress, topics and offsets, sink lag per partition, registry subjects.

    Exit 0 when every part was read; 1 when one could not be (named in the output) or the config is bad.
    """
    def body() -> dict[str, Any]:
        loaded = load(config)
        components = build_components(loaded)
        source, sink = components.get("source"), components.get("sink")
        assert not isinstance(source, Sink) and not isinstance(sink, Source)
        return gather(loaded, source, sink, timeout_s=timeout)

    report = guarded(body)
    if as_json:
        _print_json(report)
    else:
        render(report, Console(highlight=False))
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("snapshot")
def snapshot(
    config: ConfigPath,
    table: Annotated[
        list[str], typer.Option("--table", help="`schema.table` to snapshot (repeatable).", show_default=False)
    ],
    where: Annotated[
        str | None,
        typer.Option("--where", help="Only rows matching this SQL condition (e.g. \"id > 1000\").", show_default=False),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Stay and show the progress (a live bar on a terminal) until all are done."),
    ] = False,
) -> None:
    """Start an incremental snapshot of captured tables on the running source, without pausing its stream.

    Inserts an `execute-snapshot` signal into the signal table (`source.signal.table`); the source reads it from
    the WAL, so the request holds even when the source is stopped now (it starts when the source streams past it).
    Progress: `cdc status` (`incremental` under the snapshot), or `--follow`.
    See docs/source.md, "Incremental snapshots".
    """

    def body() -> str:
        loaded = load(config)
        if loaded.source is None:
            fail("the config has no source")
        assert loaded.source is not None
        source = loaded.source
        signals = configured_signal_table(source)
        names = [str(table_ref(t)) for t in table]
        with connect(source, "cdc-connector-cli") as conn:
            captured = {str(t) for t in publication_tables(conn, source.publication.name)}
            missing = [n for n in names if n not in captured]
            if missing:
                fail(f"not captured (not in publication {source.publication.name}): {', '.join(missing)}")
            return send_signal(conn, signals, "execute-snapshot", snapshot_signal_data(names, where))

    signal_id = guarded(body)
    typer.echo(f"incremental snapshot of {', '.join(table)} requested (signal {signal_id})")
    if follow:
        guarded(lambda: _follow(config, signal_id, [str(table_ref(t)) for t in table]))


def _follow(config: Path, signal_id: str, tables: list[str]) -> None:
    source = load(config).source
    assert source is not None
    reporter = ProgressReporter(every_s=2.0)
    try:
        with connect(source, "cdc-connector-cli") as conn:
            store = StateStore(conn)
            follow_snapshot(lambda: store.incremental(source.slot.name), signal_id, tables, reporter=reporter)
    finally:
        reporter.close()
    typer.echo(f"incremental snapshot of {', '.join(tables)} complete")


def _mount_command_groups() -> None:
    """Add the command groups installed beside the runtime; one whose package is absent is left out."""
    for entry in entry_points(group="cdc.commands"):
        try:
            group = entry.load()
        except ImportError:
            continue
        app.add_typer(group, name=entry.name)


_mount_command_groups()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
