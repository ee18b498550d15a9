"""Streaming burst: a backlog of inserts then updates on a narrow table, drained by each side from a stopped start.

Every slot exists (primed with one row) before the backlog is committed, so each side reads the same WAL:
source (WAL -> Kafka acknowledged: our source, Debezium's PostgreSQL connector), sink (our source's topic ->
destination rows: our sink, Debezium's JDBC sink with its defaults and tuned, each into a fresh database), and
ours end to end (`cdc run` with source and sink).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from bench.harness.context import Bench, stage
from bench.harness.probes import destination_counts, execute, has_row, max_id_progress
from bench.harness.procs import BenchError, Figure, Side, drain

NARROW = "id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, flag boolean"
NARROW_ROW = "g, 'name ' || g, g * 1.5, now(), mod(g, 2) = 0"
LABELS = {
    "source": "source: WAL -> Kafka acknowledged (events/s)",
    "sink": "sink: Kafka -> destination rows (rows/s)",
    "e2e": "end to end, `cdc run` draining the backlog (events/s)",
}
SINK_LABELS = {"jdbc_default": "JDBC sink, defaults", "jdbc_tuned": "JDBC sink, unnest inserts, batch 5,000"}


def insert_rows(table: str, low: int, high: int, row: str = NARROW_ROW) -> sql.Composed:
    return sql.SQL(f"INSERT INTO {{}} SELECT {row} FROM generate_series({low}::bigint, {high}::bigint) g").format(
        sql.Identifier(table)
    )


def backlog(table: str, inserts: int, updates: int, tx_size: int) -> list[sql.Composed]:
    """`inserts` rows (ids 1..), then `updates` of the first rows ('updated <id>'), in transactions of `tx_size`."""
    out: list[sql.Composed] = [
        insert_rows(table, low, min(inserts, low + tx_size - 1)) for low in range(1, inserts + 1, tx_size)
    ]
    update = "UPDATE {} SET name = 'updated ' || id, amount = amount + 1 WHERE id BETWEEN {} AND {}"
    out += [
        sql.SQL(update).format(sql.Identifier(table), low, min(updates, low + tx_size - 1))
        for low in range(1, updates + 1, tx_size)
    ]
    return out


def run(bench: Bench) -> dict[str, Any]:
    args, table = bench.args, f"{bench.id}"
    inserts, updates = args.inserts, args.updates
    events = inserts + updates
    bench.create_table(table, NARROW)
    ours_prefix, dbz_prefix, e2e_prefix = (f"{bench.id}_{s}" for s in ("ours", "dbz", "e2e"))
    ours_topic, dbz_topic = f"{ours_prefix}.public.{table}", f"{dbz_prefix}.public.{table}"
    e2e_db = bench.destination(e2e_prefix)
    sources: dict[str, Side] = {
        "ours": bench.ours(ours_prefix, source=bench.our_source(ours_prefix, [table])),
        "debezium": bench.connect(dbz_prefix, {dbz_prefix: bench.debezium_source(dbz_prefix, [table])}),
    }
    e2e = bench.ours(
        e2e_prefix,
        source=bench.our_source(e2e_prefix, [table]),
        sink_dsn=e2e_db,
        topics=[f"{e2e_prefix}.public.{table}"],
    )

    bench.say(f"burst: priming three slots on {table}")
    bench.prime(
        {**sources, "e2e": e2e},
        {"ours": ours_prefix, "debezium": dbz_prefix, "e2e": e2e_prefix},
        table,
        lambda: execute(bench.source_dsn, [insert_rows(table, 0, 0)]),
        {
            "ours": lambda: bench.offsets(ours_topic) >= 1,
            "debezium": lambda: bench.offsets(dbz_topic) >= 1,
            "e2e": lambda: has_row(e2e_db, table),
        },
    )
    for side in (*sources.values(), e2e):
        side.stop()
    written = execute(bench.source_dsn, backlog(table, inserts, updates, args.tx_size))
    bench.say(f"burst: wrote {events:,} events in {written:.1f}s")

    def check(dsn: str, what: str) -> dict[str, int]:
        """The destination's counts, which must be the source's (the primed row, every insert and update)."""
        counts = destination_counts(dsn, table)
        expected = {"rows": inserts + 1, "updated": updates}
        if counts != expected:
            raise BenchError(f"{what}: the destination holds {counts}, expected {expected}")
        return counts

    def source_stage(name: str) -> Figure:
        topic = ours_topic if name == "ours" else dbz_topic
        base = bench.offsets(topic)
        figure = drain(
            sources[name],
            lambda: bench.offsets(topic) - base,
            events,
            timeout=args.timeout,
            interval=0.1,
            what=f"{name} source",
        )
        figure.delivered = {"records": bench.offsets(topic) - base}
        return figure

    def sink_stage(name: str) -> Figure:
        dsn = bench.destination(f"{bench.id}_{name}")
        side: Side
        if name == "ours":
            side = bench.ours(f"{bench.id}_sink", sink_dsn=dsn, topics=[ours_topic])
        else:
            side = bench.connect(name, {name: bench.jdbc_sink(dsn, [ours_topic], tuned=name == "jdbc_tuned")})
        with max_id_progress(dsn, table, inserts, updates) as progress:
            figure = drain(side, progress, events, timeout=args.timeout, interval=0.2, what=f"{name} sink")
        figure.delivered = check(dsn, name)
        return figure

    sinks = ["ours", "jdbc_tuned"] if args.no_jdbc_default else ["ours", "jdbc_default", "jdbc_tuned"]
    stages = {
        "source": stage(bench, "burst source", ["ours", "debezium"], source_stage),
        "sink": stage(bench, "burst sink", sinks, sink_stage),
    }
    bench.say("burst: end to end, cdc run draining the backlog")
    with max_id_progress(e2e_db, table, inserts, updates) as progress:
        figure = drain(e2e, progress, events, timeout=args.timeout, interval=0.2, what="cdc run")
    figure.delivered = check(e2e_db, "cdc run")
    stages["e2e"] = {"ours": figure.as_dict()}
    return {"stages": stages, "write_s": round(written, 2)}
