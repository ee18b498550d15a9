"""Steady mixed load: a writer commits changes at a fixed offered rate while a side runs end to end; latency
percentiles at each rate of a short step search, and the highest offered rate that held.

Each side gets a table of its own (`id`, `payload`, `written_at DEFAULT clock_timestamp()`) and runs end to end
(`Bench.pipelines`). Once a primed row arrived, the destination table gets `bench_applied_at DEFAULT
clock_timestamp()`, so an inserted row's latency is the same on both sides: the destination's clock when its
insert ran there minus the source's clock when it was written. Each transaction of n rows inserts 0.6 n new rows
(the timed ones), updates 0.2 n rows of the previous transaction, and inserts 0.1 n short-lived rows (negative
ids) that the next transaction deletes.

After `--steady-warmup` seconds at the first rate (not measured), the step search starts at `--steady-rate`
and doubles up to `--steady-max-rate`, `--steady-seconds` a step, and stops at the first rate that does not hold.
A rate holds when (1) the writer kept its schedule: it achieved at least 95% of the offered rate, (2) every timed
row was applied within `--steady-drain` seconds of the step's end, and (3) their p99 latency stayed under
`--p99-bound` ms.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from bench.harness.context import Bench, row_arrived
from bench.harness.probes import execute, wait_for
from bench.harness.procs import BenchError, Side, cpu_seconds, peak_rss_mib

COLUMNS = "id bigint PRIMARY KEY, payload text, written_at timestamptz NOT NULL DEFAULT clock_timestamp()"
HOLD_WRITE_SHARE = 0.95
MAX_TX_PER_S = 200
LABELS = {
    "fixed": "steady mixed load, latency at the first offered rate",
    "held": "steady mixed load, highest offered rate held",
}


def rates(args: Any) -> list[float]:
    count = int(math.log2(max(args.steady_max_rate / args.steady_rate, 1))) + 1
    return [args.steady_rate * 2**k for k in range(count)]


# Writers commit as an application does on a server of default settings: the local stack runs with
# `synchronous_commit = off`, under which a commit reaches the WAL sender only at the WAL writer's next round (up to
# `wal_writer_delay`, 200 ms), which would count as the pipeline's latency on either side.
WRITER_OPTIONS = "-c synchronous_commit=on"


class Writer:
    """Commits the mixed load on a fixed schedule; ids carry on from step to step."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn = dsn
        self.ident = sql.Identifier(table)
        self.next_id = 1
        self.next_short = 1
        self.previous: tuple[int, int, int, int] | None = None  # last transaction's inserts and short-lived rows

    def statement(self, rows: int) -> sql.Composed:
        inserts = max(1, round(rows * 0.6))
        short = round(rows * 0.1)
        updates = round(rows * 0.2)
        low, high = self.next_id, self.next_id + inserts - 1
        s_low, s_high = self.next_short, self.next_short + short - 1
        parts = [
            sql.SQL(
                "ins AS (INSERT INTO {} (id, payload) SELECT g, 'row ' || g FROM generate_series({}, {}) g)"
            ).format(self.ident, low, high),
            sql.SQL("tmp AS (INSERT INTO {} (id, payload) SELECT -g, 'short' FROM generate_series({}, {}) g)").format(
                self.ident, s_low, s_high
            ),
        ]
        if self.previous is not None:
            p_low, p_high, ps_low, ps_high = self.previous
            parts.append(
                sql.SQL("upd AS (UPDATE {} SET payload = 'upd ' || id WHERE id BETWEEN {} AND {})").format(
                    self.ident, p_low, min(p_high, p_low + updates - 1)
                )
            )
            parts.append(
                sql.SQL("del AS (DELETE FROM {} WHERE id BETWEEN {} AND {})").format(self.ident, -ps_high, -ps_low)
            )
        self.previous = (low, high, s_low, s_high)
        self.next_id, self.next_short = high + 1, s_high + 1
        return sql.SQL("WITH {} SELECT 1").format(sql.SQL(", ").join(parts))

    def step(self, rate: float, seconds: float, tx_rows: int) -> dict[str, Any]:
        """`rate` rows/s for `seconds`; a late writer is counted, not hidden."""
        rows = max(tx_rows, math.ceil(rate / MAX_TX_PER_S))
        interval = rows / rate
        first_id, late, sent = self.next_id, 0, 0
        with psycopg.connect(self.dsn, autocommit=True, options=WRITER_OPTIONS) as conn:
            start = time.monotonic()
            for tick in range(max(1, int(seconds / interval))):
                due = start + tick * interval
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > interval:
                    late += 1
                conn.execute(self.statement(rows))
                sent += rows
            elapsed = time.monotonic() - start
        return {
            "offered_rate": rate,
            "tx_rows": rows,
            "achieved_write_rate": round(sent / elapsed),
            "writer_late_ticks": late,
            "first_id": first_id,
            "last_id": self.next_id - 1,
        }

    def finish(self) -> None:
        """Delete the last transaction's short-lived rows."""
        if self.previous is not None:
            _, _, s_low, s_high = self.previous
            execute(
                self.dsn, [sql.SQL("DELETE FROM {} WHERE id BETWEEN {} AND {}").format(self.ident, -s_high, -s_low)]
            )


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(bench: Bench) -> dict[str, Any]:
    args = bench.args
    stages: dict[str, dict[str, Any]] = {"fixed": {}, "held": {}}
    steps: dict[str, list[dict[str, Any]]] = {}
    for name in bench.rotated(["ours", "debezium"]):
        table = f"{bench.id}_st_{name[:3]}"
        bench.create_table(table, COLUMNS)
        pipe = bench.pipeline(
            name, table, batch={"max_wait_ms": 50}, debezium_source={"poll.interval.ms": str(args.steady_poll_ms)}
        )
        side, dsn = pipe.side, pipe.dsn
        bench.say(f"steady: {name}: priming")
        bench.prime(
            {name: side},
            {name: pipe.slot},
            table,
            partial(
                execute,
                bench.source_dsn,
                [sql.SQL("INSERT INTO {} (id, payload) VALUES (0, 'prime')").format(sql.Identifier(table))],
            ),
            {name: row_arrived(dsn, table)},
        )
        execute(
            dsn,
            [
                sql.SQL("ALTER TABLE {} ADD COLUMN bench_applied_at timestamptz DEFAULT clock_timestamp()").format(
                    sql.Identifier(table)
                )
            ],
        )
        steps[name] = ladder(bench, name, side, dsn, table)
        held = [s for s in steps[name] if s["held"]]
        first = steps[name][0]
        stages["fixed"][name] = {k: v for k, v in first.items() if k not in ("first_id", "last_id")}
        failed = next((s["offered_rate"] for s in steps[name] if not s["held"]), 0)
        stages["held"][name] = {
            "held_rate": held[-1]["offered_rate"] if held else 0,
            "first_failed_rate": failed,
            "peak_rss_mib": round(peak_rss_mib(side.pid) if side.pid else 0),
        }
        side.stop()
    return {"stages": stages, "steps": steps, "rule": hold_rule(args), "bound": args.p99_bound}


def hold_rule(args: Any) -> str:
    return (
        f"writer achieved >= {HOLD_WRITE_SHARE:.0%} of the offered rate, every timed row applied within "
        f"{args.steady_drain:.0f} s of the step's end, p99 <= {args.p99_bound:.0f} ms"
    )


def ladder(bench: Bench, name: str, side: Side, dsn: str, table: str) -> list[dict[str, Any]]:
    args = bench.args
    writer = Writer(bench.source_dsn, table)
    if args.steady_warmup > 0:
        # Not measured: a JVM's JIT and both sides' caches warm up here, as they would in a long-running deployment.
        bench.say(f"steady: {name}: warming up for {args.steady_warmup:.0f}s")
        warm = writer.step(rates(args)[0], args.steady_warmup, args.steady_tx_rows)
        applied_latencies(dsn, table, warm["first_id"], warm["last_id"], args.timeout, side)
    out: list[dict[str, Any]] = []
    for rate in rates(args):
        cpu_before = cpu_seconds(side.pid) if side.pid else 0.0
        bench.say(f"steady: {name}: {rate:,.0f} rows/s offered for {args.steady_seconds:.0f}s")
        step = writer.step(rate, args.steady_seconds, args.steady_tx_rows)
        values = applied_latencies(dsn, table, step["first_id"], step["last_id"], args.steady_drain, side)
        timed = step["last_id"] - step["first_id"] + 1
        values.sort()
        step.update(
            {
                "rows_timed": timed,
                "rows_applied": len(values),
                "p50_ms": round(percentile(values, 0.5), 1),
                "p90_ms": round(percentile(values, 0.9), 1),
                "p99_ms": round(percentile(values, 0.99), 1),
                "max_ms": round(values[-1], 1) if values else float("nan"),
                "cpu_s": round((cpu_seconds(side.pid) if side.pid else 0.0) - cpu_before, 2),
            }
        )
        step["held"] = (
            step["achieved_write_rate"] >= HOLD_WRITE_SHARE * rate
            and len(values) == timed
            and step["p99_ms"] <= args.p99_bound
        )
        bench.say(
            f"steady: {name}: {rate:,.0f}/s offered, {step['achieved_write_rate']:,}/s written, p50 "
            f"{step['p50_ms']:,.0f} ms, p99 {step['p99_ms']:,.0f} ms: {'held' if step['held'] else 'did not hold'}"
        )
        out.append(step)
        if not step["held"]:
            break
    writer.finish()
    check(bench.source_dsn, dsn, table, side, args.timeout)
    return out


def applied_latencies(dsn: str, table: str, low: int, high: int, drain: float, side: Side) -> list[float]:
    """Latency (ms) of each timed row of a step that was applied within `drain` seconds of the step's end."""
    query = sql.SQL(
        "SELECT extract(epoch FROM d.bench_applied_at - d.written_at) * 1000 FROM {} d WHERE d.id BETWEEN %s AND %s"
    ).format(sql.Identifier(table))
    count = sql.SQL("SELECT count(*) FROM {} WHERE id BETWEEN %s AND %s").format(sql.Identifier(table))
    deadline = time.monotonic() + drain
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(count, (low, high)).fetchone()
            if row is not None and row[0] >= high - low + 1:
                break
            problem = side.failure()
            if problem:
                raise BenchError(f"steady: {problem}")
            time.sleep(0.25)
        return [float(r[0]) for r in conn.execute(query, (low, high))]


def check(source: str, dsn: str, table: str, side: Side, timeout: float) -> None:
    """Every change arrived: the destination's rows and updated rows are the source's (short-lived rows gone)."""
    query = sql.SQL("SELECT count(*), count(*) FILTER (WHERE payload LIKE 'upd %%') FROM {}").format(
        sql.Identifier(table)
    )

    def counts(where: str) -> tuple[int, int]:
        with psycopg.connect(where, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    expected = counts(source)
    wait_for(lambda: counts(dsn) == expected, f"steady: the destination to hold {expected}", timeout, side.failure)
