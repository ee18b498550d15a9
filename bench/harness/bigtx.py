"""One large transaction: `--big-tx-rows` inserts committed at once while a side runs end to end; the time from
the commit to the last row applied, and the peak RSS of each side's process (source and sink together: our
`cdc run`, Debezium's Connect worker with its PostgreSQL connector and tuned JDBC sink)."""

from __future__ import annotations

from functools import partial
from typing import Any

from bench.harness.burst import NARROW, insert_rows
from bench.harness.context import Bench, row_arrived
from bench.harness.probes import destination_counts, execute, max_id_progress
from bench.harness.procs import BenchError, measure

LABELS = {"applied": "one large transaction: commit -> last row applied"}


def run(bench: Bench) -> dict[str, Any]:
    args, rows = bench.args, bench.args.big_tx_rows
    out: dict[str, Any] = {}
    for name in bench.rotated(["ours", "debezium"]):
        table = f"{bench.id}_bt_{name[:3]}"
        bench.create_table(table, NARROW)
        pipe = bench.pipeline(name, table)
        bench.say(f"big transaction: {name}: priming")
        bench.prime(
            {name: pipe.side},
            {name: pipe.slot},
            table,
            partial(execute, bench.source_dsn, [insert_rows(table, 0, 0)]),
            {name: row_arrived(pipe.dsn, table)},
        )
        commit = execute(bench.source_dsn, [insert_rows(table, 1, rows)])
        bench.say(f"big transaction: {name}: {rows:,} rows committed in {commit:.1f}s")
        with max_id_progress(pipe.dsn, table, rows) as progress:
            figure = measure(
                pipe.side,
                progress,
                rows,
                timeout=args.timeout,
                interval=0.2,
                what=f"{name} big transaction",
                from_start=True,
            )
        pipe.side.stop()
        counts = destination_counts(pipe.dsn, table)
        if counts["rows"] != rows + 1:
            raise BenchError(
                f"{name} big transaction: the destination holds {counts['rows']} rows, expected {rows + 1}"
            )
        figure.delivered = counts
        out[name] = {**figure.as_dict(), "applied_s": round(figure.seconds, 2), "commit_s": round(commit, 2)}
        bench.say(
            f"big transaction: {name}: applied {figure.seconds:.1f}s after the commit, "
            f"peak RSS {figure.peak_rss_mib:.0f} MiB"
        )
    return {"stages": {"applied": {k: out[k] for k in ("ours", "debezium")}}}
