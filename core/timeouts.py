"""Network bounds shared by every PostgreSQL connection the connector opens (docs/operations.md, Timeouts).

A peer that accepts a connection and never answers, or a path that silently stops delivering, must end in an
error the retry loops see, never in a wait without end.
"""

from __future__ import annotations

from typing import Any

KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3
# Unacknowledged outgoing data is given as long as an idle connection's keepalives take to declare the peer dead.
TCP_USER_TIMEOUT_MS = (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT) * 1000


def libpq_options(connect_timeout_s: int) -> dict[str, Any]:
    """`psycopg.connect` keyword arguments: a bounded connect, TCP keepalives, a bound on unacknowledged sends."""
    return {
        "connect_timeout": connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
