"""Initial snapshot: the existing rows of a table read into Kafka by a side that starts on it with no slot yet.

Two tables of `--snapshot-rows` rows each (the wide one 30 columns of common types), filled before any slot
exists; per table, our source (`snapshot.mode: initial`) and Debezium's PostgreSQL connector
(`snapshot.mode=initial`) each start with a fresh slot and are timed from the first record on their topic to the
last (start-up, slot creation and the snapshot's export not counted).
"""

from __future__ import annotations

from typing import Any

from bench.harness.burst import NARROW, NARROW_ROW, insert_rows
from bench.harness.context import Bench, stage
from bench.harness.procs import Figure, Side, drain

WIDE_TYPES = [
    ("text", "'text ' || g"),
    ("integer", "(g % 100000)::integer"),
    ("numeric(12,2)", "g * 1.25"),
    ("timestamptz", "now()"),
    ("boolean", "g % 3 = 0"),
    ("double precision", "g / 7.0"),
    ("bigint", "g * 31"),
    ("date", "current_date"),
    ("varchar(40)", "'varchar ' || g"),
]
WIDE_COLUMNS = 30
WIDE = ", ".join(
    ["id bigint PRIMARY KEY"] + [f"c{i:02d} {WIDE_TYPES[i % len(WIDE_TYPES)][0]}" for i in range(1, WIDE_COLUMNS)]
)
WIDE_ROW = ", ".join(["g"] + [WIDE_TYPES[i % len(WIDE_TYPES)][1] for i in range(1, WIDE_COLUMNS)])
SHAPES = {"narrow": (NARROW, NARROW_ROW), "wide": (WIDE, WIDE_ROW)}
LABELS = {
    "narrow": "initial snapshot, narrow table, 5 columns (rows/s)",
    "wide": f"initial snapshot, wide table, {WIDE_COLUMNS} columns (rows/s)",
}
FILL_ROWS = 100_000


def run(bench: Bench) -> dict[str, Any]:
    rows = bench.args.snapshot_rows
    stages: dict[str, Any] = {}
    for shape, (columns, row) in SHAPES.items():
        table = f"{bench.id}_{shape}"
        fill = [insert_rows(table, low, min(rows, low + FILL_ROWS - 1), row) for low in range(1, rows + 1, FILL_ROWS)]
        bench.create_table(table, columns, fill)
        bench.say(f"snapshot: {rows:,} rows in {table}")

        def one(name: str, table: str = table) -> Figure:
            prefix = f"{table}_{name[:3]}"
            side: Side
            if name == "ours":
                side = bench.ours(prefix, source=bench.our_source(prefix, [table], snapshot="initial"))
            else:
                side = bench.connect(prefix, {prefix: bench.debezium_source(prefix, [table], snapshot="initial")})
            topic = f"{prefix}.public.{table}"
            figure = drain(
                side,
                lambda: bench.offsets(topic),
                rows,
                timeout=bench.args.timeout,
                interval=0.1,
                what=f"{name} snapshot",
            )
            figure.delivered = {"records": bench.offsets(topic)}
            return figure

        stages[shape] = stage(bench, f"snapshot {shape}", ["ours", "debezium"], one)
    return {"stages": stages}
