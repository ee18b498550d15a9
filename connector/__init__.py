"""cdc-connector: PostgreSQL -> Kafka -> destination database change-data-capture runtime."""

from __future__ import annotations

__version__ = "0.1.0"
