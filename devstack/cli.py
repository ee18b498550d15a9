"""`cdc dev up | down | status`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from connector.cli_common import guarded
from connector.config import is_secret_key, load_config
from connector.config_loader import environment_with
from core import logs
from devstack import control
from devstack.demo import run_demo
from devstack.ports import Ports

app = typer.Typer(
    help="The local stack of real services (PostgreSQL, Apache Kafka, Schema Registry) as plain processes.",
    no_args_is_help=True,
)

_DEFAULTS = Ports()
T = TypeVar("T")

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="CDC_HOME",
        help="State directory (data, logs, pids.json, dev.env). [default: .cdc under the current directory]",
        show_default=False,
        file_okay=False,
    ),
]


def _port_option(flag: str, env: str, what: str) -> typer.models.OptionInfo:
    return typer.Option(flag, envvar=env, min=0, max=65535, help=f"{what} port on 127.0.0.1 (0: any free port).")


def _run(body: Callable[[], T]) -> T:
    return guarded(body)


@app.command()
def up(
    *,
    home: HomeOption = None,
    pg_port: Annotated[int, _port_option("--pg-port", "CDC_DEV_PG_PORT", "PostgreSQL")] = _DEFAULTS.postgres,
    kafka_port: Annotated[int, _port_option("--kafka-port", "CDC_DEV_KAFKA_PORT", "Kafka broker")] = _DEFAULTS.kafka,
    kafka_controller_port: Annotated[
        int, _port_option("--kafka-controller-port", "CDC_DEV_KAFKA_CONTROLLER_PORT", "Kafka controller")
    ] = _DEFAULTS.kafka_controller,
    registry_port: Annotated[
        int, _port_option("--registry-port", "CDC_DEV_REGISTRY_PORT", "Schema Registry HTTP")
    ] = _DEFAULTS.registry,
    registry_management_port: Annotated[
        int,
        _port_option("--registry-management-port", "CDC_DEV_REGISTRY_MANAGEMENT_PORT", "Schema Registry management"),
    ] = _DEFAULTS.registry_management,
    regions: Annotated[
        int,
        typer.Option(
            "--regions",
            min=1,
            max=2,
            help="2: also region B (a second Kafka cluster and registry) and MirrorMaker 2 between the clusters.",
        ),
    ] = 1,
    kafka_b_port: Annotated[
        int, _port_option("--kafka-b-port", "CDC_DEV_KAFKA_B_PORT", "Region B's Kafka broker")
    ] = _DEFAULTS.kafka_b,
    kafka_b_controller_port: Annotated[
        int, _port_option("--kafka-b-controller-port", "CDC_DEV_KAFKA_B_CONTROLLER_PORT", "Region B's Kafka controller")
    ] = _DEFAULTS.kafka_b_controller,
    registry_b_port: Annotated[
        int, _port_option("--registry-b-port", "CDC_DEV_REGISTRY_B_PORT", "Region B's Schema Registry HTTP")
    ] = _DEFAULTS.registry_b,
    registry_b_management_port: Annotated[
        int,
        _port_option(
            "--registry-b-management-port", "CDC_DEV_REGISTRY_B_MANAGEMENT_PORT", "Region B's registry management"
        ),
    ] = _DEFAULTS.registry_b_management,
    kafka_secure_port: Annotated[
        int, _port_option("--kafka-secure-port", "CDC_DEV_KAFKA_SECURE_PORT", "Kafka SASL_SSL (with --secure)")
    ] = _DEFAULTS.kafka_secure,
    free_ports: Annotated[bool, typer.Option("--free-ports", help="Pick free ports for every service.")] = False,
    secured: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="TLS and passwords: PostgreSQL scram-sha-256 over TLS with least-privilege roles, a Kafka SASL_SSL "
            "listener (SCRAM-SHA-512), registry basic auth; certificates from a throwaway CA (docs/security.md).",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for each service.")] = 180.0,
) -> None:
    """Start PostgreSQL, Kafka and the Schema Registry (if not running), wait until they answer, write dev.env.

    With --regions 2 also region B: a second Kafka cluster and registry, and MirrorMaker 2 mirroring topics both
    ways (`A.<topic>` in B, `B.<topic>` in A); dev.env then also holds CDC_KAFKA_BOOTSTRAP_B and
    CDC_SCHEMA_REGISTRY_URL_B. The PostgreSQL instance (destination, registry storage) is shared by both regions.

    A service that ran from this directory (not stopped by `cdc dev down`) keeps its ports when started again.
    """
    requested = (
        Ports.free()
        if free_ports
        else Ports(
            pg_port,
            kafka_port,
            kafka_controller_port,
            registry_port,
            registry_management_port,
            kafka_b_port,
            kafka_b_controller_port,
            registry_b_port,
            registry_b_management_port,
            kafka_secure_port,
        )
    )
    root = control.resolve_home(home)
    endpoints = _run(
        lambda: control.up(root, requested, timeout=timeout, echo=typer.echo, regions=regions, secured=secured)
    )
    typer.echo(f"\nstack is up; endpoints in {root / 'dev.env'}:")
    for key, value in endpoints.as_env().items():
        shown = "**********" if is_secret_key(key) or key.endswith("USER_INFO") else value
        typer.echo(f"  {key}={shown}")
    typer.echo(f"use them with: set -a; . {root / 'dev.env'}; set +a")


@app.command()
def down(
    home: HomeOption = None,
    clean: Annotated[bool, typer.Option("--clean", help="Also delete PostgreSQL's and Kafka's data.")] = False,
) -> None:
    """Stop exactly the processes `cdc dev up` started in this state directory."""
    root = control.resolve_home(home)
    stopped = _run(lambda: control.down(root, clean=clean, echo=typer.echo))
    typer.echo(f"stopped {len(stopped)} service(s)" if stopped else f"nothing was running from {root}")


@app.command()
def status(home: HomeOption = None) -> None:
    """What runs where (pid, ports) and whether it answers now; exit 1 unless every service is healthy."""
    root = control.resolve_home(home)
    services = _run(lambda: control.status(root))
    for svc in services:
        state = "healthy" if svc.healthy else ("running, NOT answering" if svc.running else "stopped")
        where = " ".join(f"{key}={port}" for key, port in svc.ports.items())
        pid = f"pid {svc.pid}" if svc.pid else "-"
        extra = f"  [{svc.detail}]" if svc.detail else ""
        typer.echo(f"{control.LABELS[svc.name]:<22} {state:<24} {pid:<10} {where}{extra}")
    if all(svc.healthy for svc in services):
        return
    if not any(svc.pid for svc in services):
        foreign = _run(lambda: control.foreign_stack(root))
        if foreign is not None:
            typer.echo(f"a stack that `cdc dev up` did not start answers at the endpoints in {root / 'dev.env'}")
            return
    raise typer.Exit(1)


@app.command()
def demo(
    config: Annotated[Path, typer.Argument(help="A config with a source and a sink.")] = Path(
        "configs/quickstart.yaml"
    ),
    seconds: Annotated[
        float, typer.Option("--seconds", help="Write changes this long, wait for the target, stop (0: until Ctrl-C).")
    ] = 20.0,
    env_file: Annotated[Path, typer.Option("--env-file", help="Endpoints written by `cdc dev up`.")] = Path(
        ".cdc/dev.env"
    ),
) -> None:
    """Run CONFIG on the local stack with a demo table (public.customers) that changes while it streams."""
    def body() -> int:
        loaded = load_config(config, env=environment_with(env_file if env_file.exists() else None))
        logs.configure(loaded.logging.level, loaded.logging.format)
        return run_demo(loaded, seconds)

    raise typer.Exit(_run(body))
