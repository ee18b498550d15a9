"""`cdc dev demo`: the quickstart pipeline on the local stack, with a table that changes while it runs.

Seeds `public.customers` in the source database, runs the config's source and sink in this process,
writes inserts, updates and deletes for a while, waits until the target holds exactly what the source
holds, and says so. With `--seconds 0` it runs until Ctrl-C like `cdc run`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from connector.config import ConnectorConfig
from connector.pipeline import Pipeline
from core.errors import ConnectorError

log = logging.getLogger(__name__)

DEFAULT_TABLE = "customers"
COLUMNS = ("id", "name", "email", "balance", "updated_at")


def seed(dsn: str, table: str = DEFAULT_TABLE, rows: int = 1000) -> None:
    """Create the demo table when missing and fill it (idempotent)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, name text NOT NULL, email text, "
                "balance numeric(12,2) NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier("public", table))
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, name, email, balance) SELECT g, 'customer ' || g, 'c' || g || '@example.com', "
                "g * 1.5 FROM generate_series(1, %s) g ON CONFLICT (id) DO NOTHING"
            ).format(sql.Identifier("public", table)),
            (rows,),
        )


def digest(dsn: str, table: str = DEFAULT_TABLE) -> tuple[int, str] | None:
    """Row count and a checksum of the demo table; None when it does not exist (yet)."""
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(row({cols})::text, ',' ORDER BY id)), '') FROM {table}"
    ).format(cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), table=sql.Identifier("public", table))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return (int(row[0]), str(row[1])) if row else None


def _write(dsn: str, table_name: str, until: float, stop: threading.Event) -> int:
    """Random small transactions until `until`; returns how many it committed."""
    chance = random.Random(7)  # noqa: S311 - demo data, not security
    table = sql.Identifier("public", table_name)
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        next_id = int(conn.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(table)).fetchone()[0])  # type: ignore[index]
        while time.monotonic() < until and not stop.is_set():
            with conn.transaction():
                conn.execute(
                    sql.SQL("INSERT INTO {} (id, name, email) VALUES (%s, %s, %s)").format(table),
                    (next_id, f"new customer {next_id}", f"n{next_id}@example.com"),
                )
                conn.execute(
                    sql.SQL("UPDATE {} SET balance = balance + 10, updated_at = now() WHERE id = %s").format(table),
                    (chance.randint(1, next_id),),
                )
                if chance.random() < 0.2:
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (chance.randint(1, next_id),))
            next_id += 1
            done += 1
            stop.wait(0.05)
    return done


def run_demo(config: ConnectorConfig, seconds: float, table: str = DEFAULT_TABLE) -> int:
    if config.source is None or config.sink is None:
        raise ConnectorError("the demo needs a config with both a source and a sink (configs/quickstart.yaml)")
    source_dsn = config.source.dsn.get_secret_value()
    target_dsn = config.sink.dsn.get_secret_value()
    seed(source_dsn, table)
    pipeline = Pipeline(config)
    if seconds <= 0:
        log.info("running until Ctrl-C; change public.%s in the source database and watch the target", table)
        return pipeline.run()
    outcome: dict[str, Any] = {}

    def drive() -> None:
        written = _write(source_dsn, table, time.monotonic() + seconds, pipeline.stop)
        deadline = time.monotonic() + 120
        expected = digest(source_dsn, table)
        while not pipeline.stop.is_set() and time.monotonic() < deadline:
            if digest(target_dsn, table) == expected:
                outcome["matched"] = True
                break
            pipeline.stop.wait(0.5)
        outcome["written"] = written
        outcome["rows"] = expected[0] if expected else 0
        pipeline.stop.set()

    driver = threading.Thread(target=drive, name="demo-writer", daemon=True)
    driver.start()
    code = pipeline.run()
    driver.join(5)
    if outcome.get("matched"):
        log.info(
            "demo done: %d transactions written while streaming; target public.%s equals the source (%d rows)",
            outcome["written"], table, outcome["rows"],
        )  # fmt: skip
        return code
    raise ConnectorError(
        f"the target's public.{table} did not catch up with the source",
        hint="see the log above; `cdc status configs/quickstart.yaml` shows lag and offsets",
    )
