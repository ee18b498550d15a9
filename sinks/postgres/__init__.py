"""PostgreSQL sink: Kafka change topics -> destination PostgreSQL, idempotent on change ids. See docs/sink.md.

`PostgresSink` is imported lazily: `connector.config` imports this package's `config` module, and the
sink itself imports `connector.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sinks.postgres.sink import PostgresSink

__all__ = ["PostgresSink"]


def __getattr__(name: str) -> Any:
    if name == "PostgresSink":
        from sinks.postgres.sink import PostgresSink

        return PostgresSink
    raise AttributeError(name)
