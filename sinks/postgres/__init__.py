"""PostgreSQL sink: Kafka change topics -> destination PostgreSQL, idempotent on change ids. See docs/sink.md."""

from __future__ import annotations

from sinks.postgres.sink import PostgresSink

__all__ = ["PostgresSink"]
