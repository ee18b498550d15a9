"""PostgreSQL source (pgoutput logical replication). See docs/source.md.

`PostgresSource` is imported lazily: `connector.config` imports this package's `config` module, and the
source itself imports `connector.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sources.postgres.source import PostgresSource

__all__ = ["PostgresSource"]


def __getattr__(name: str) -> Any:
    if name == "PostgresSource":
        from sources.postgres.source import PostgresSource

        return PostgresSource
    raise AttributeError(name)
