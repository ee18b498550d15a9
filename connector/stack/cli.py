"""`cdc dev up | down | status`."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The local stack of real services (PostgreSQL, Apache Kafka, Schema Registry) as plain processes.",
    no_args_is_help=True,
)
