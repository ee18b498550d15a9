"""Sink throughput: rows/s applied, batch latency and RSS, for narrow and wide rows, insert- and upsert-heavy.

    python bench/sink_bench.py --rows 200000 [--batch 5000] [--e2e] [--ids ordered|random] [--only CASE ...]

Reads the endpoints from the environment (CDC_TARGET_DSN, and for --e2e CDC_KAFKA_BOOTSTRAP and
CDC_SCHEMA_REGISTRY_URL; `.cdc/dev.env` holds them for the local stack).

1. apply: `Applier.apply` on prepared changes (ledger insert + COPY into the stage + merge + offsets, one
   transaction per batch) - the destination side alone; compared with a per-row `executemany` upsert.
2. --e2e: envelopes produced to Kafka (by a child process), then a PostgresSink consumes, decodes and applies
   them; rows/s from the first to the last applied offset (includes Kafka consume and Avro decoding), and the
   peak RSS of the process that ran the sink. `--consumer KEY=VALUE` sets a librdkafka property of the sink's
   consumer (e.g. `queued.max.messages.kbytes=65536` for librdkafka's own prefetch limit).
3. decode, decode-wide (only with --only): CPU per message (`time.process_time`, best of --rows/--batch batches) of
   the sink's decoder (messages -> changes) and of the text COPY of their rows, no Kafka, no database. Rows are
   read natively into COPY lines where cdc_accel is built; `--no-lines` keeps them as Python values (the path
   before, and the one for schemas the native reader does not claim); `CDC_ACCEL=0` is the pure path.

`apply` takes its changes from the sink's decoder too (wire-format messages, registry in memory), so with cdc_accel
they carry native COPY lines (`lines=` counts them).

Changes come in transactions of 1,000, 128 bytes of WAL apart, with the source's change ids (`--ids ordered`, the
default: ascending with the commit LSN) or random UUIDs (`--ids random`, what ids of the earlier layout look like to
the ledger's index). `--only` picks cases: apply, upsert, wide, wide-upsert, executemany, ledger, e2e, e2e-wide,
decode, decode-wide, phases.

4. phases (only with --only): `Applier.apply` of narrow insert-heavy batches with each statement timed (ledger
   insert, COPY into the stage, merge, offsets, BEGIN/COMMIT; the rest is Python): where the destination side's
   time goes, in µs per row and shares.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness.procs import CLOCK_TICKS, cpu_seconds  # noqa: E402
from connector.config_loader import read_env_file  # noqa: E402
from core.records import AvroSchema  # noqa: E402
from schemas.accel import ENABLED as ACCELERATED  # noqa: E402
from sinks.postgres.apply import Applier  # noqa: E402
from sinks.postgres.changes import Change  # noqa: E402
from sinks.postgres.config import PostgresSinkConfig  # noqa: E402
from sinks.postgres.state import ensure_state  # noqa: E402
from sinks.postgres.tables import TableManager  # noqa: E402
from sources.postgres.change_id import ChangeIds, namespace_for  # noqa: E402

IDS = ChangeIds(namespace_for("bench", "bench"))
RANDOM_IDS = False
NO_LINES = False
TX = 1000
WAL_PER_CHANGE = 128


def position(lsn0: int, j: int) -> tuple[int, int, str]:
    """(commit_lsn, lsn, change id) of the j-th change: transactions of `TX` changes."""
    lsn = lsn0 + WAL_PER_CHANGE * j
    commit = lsn0 + WAL_PER_CHANGE * ((j // TX) * TX + TX - 1) + 64
    return commit, lsn, str(uuid.uuid4()) if RANDOM_IDS else IDS.streamed(commit, lsn, j % TX)


def load_env() -> None:
    path = ROOT / ".cdc" / "dev.env"
    if path.exists():
        for key, value in read_env_file(path).items():
            os.environ.setdefault(key, value)


def schemas(table: str, wide: bool) -> tuple[AvroSchema, AvroSchema]:
    fields: list[dict[str, Any]] = [{"name": "id", "type": "long", "pg.type": "bigint"}]
    extra = 30 if wide else 4
    for i in range(extra):
        kind = i % 4
        if kind == 0:
            fields.append({"name": f"s{i}", "type": ["null", "string"], "pg.type": "text"})
        elif kind == 1:
            fields.append({"name": f"n{i}", "type": ["null", "long"], "pg.type": "bigint"})
        elif kind == 2:
            fields.append({"name": f"d{i}", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                                              "precision": 12, "scale": 2}],
                           "pg.type": "numeric(12,2)"})
        else:
            fields.append({"name": f"t{i}", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
                           "pg.type": "timestamp with time zone"})
    ns = f"bench.public.{table}"
    value = {"type": "record", "name": "Value", "namespace": ns, "fields": fields}
    envelope = {
        "type": "record", "name": "Envelope", "namespace": ns,
        "fields": [
            {"name": "before", "type": ["null", value]},
            {"name": "after", "type": ["null", f"{ns}.Value"]},
            {"name": "source", "type": {"type": "record", "name": "Source", "fields": [
                {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
                {"name": "lsn", "type": ["null", "long"]}, {"name": "commit_lsn", "type": ["null", "long"]}]}},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"]},
            {"name": "change_id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}},
        ],
    }
    key = {"type": "record", "name": "Key", "namespace": ns, "fields": [fields[0]]}
    return AvroSchema.of(envelope), AvroSchema.of(key)


def row(i: int, version: int, wide: bool) -> dict[str, Any]:
    from decimal import Decimal

    out: dict[str, Any] = {"id": i}
    for c in range(30 if wide else 4):
        kind = c % 4
        if kind == 0:
            out[f"s{c}"] = f"value {i} {version} {c}"
        elif kind == 1:
            out[f"n{c}"] = i * 1000 + version
        elif kind == 2:
            out[f"d{c}"] = Decimal(i % 100000) / 100
        else:
            out[f"t{c}"] = 1_700_000_000_000_000 + i
    return out


def envelope(table: str, i: int, version: int, at: tuple[int, int, str], wide: bool) -> dict[str, Any]:
    commit, lsn, change_id = at
    return {
        "before": None, "after": row(i, version, wide),
        "source": {"schema": "public", "table": table, "lsn": lsn, "commit_lsn": commit},
        "op": "c" if version == 0 else "u", "ts_ms": 0, "change_id": change_id, "unchanged_toast": [],
    }


class _Message:
    """A consumed message, as the sink's decoder reads it (confluent-kafka's `Message` answers the same)."""

    def __init__(self, topic: str, offset: int, key: bytes, value: bytes) -> None:
        self._topic, self._offset, self._key, self._value = topic, offset, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)


class _Registry:
    def __init__(self, schemas: dict[int, AvroSchema]) -> None:
        self.schemas = schemas

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        return self.schemas[schema_id]


def make_messages(
    table: str, n: int, wide: bool, upsert_heavy: bool, lsn0: int, *, lines: bool = True
) -> tuple[list[Any], Any]:
    """Wire-format messages of `n` changes and the sink's decoder for them (registry in memory)."""
    import threading as _threading

    from core.errors import Endpoints, RetryBudget
    from schemas.serde import Decoder, Encoder
    from sinks.postgres.decoding import ChangeDecoder
    from sinks.postgres.retry import RetryPolicy
    from transforms.base import TransformChain

    value_schema, key_schema = schemas(table, wide)
    encoder = Encoder()
    keys = max(n // 10, 1) if upsert_heavy else n
    messages = []
    for j in range(n):
        i = j % keys
        value = envelope(table, i, j // keys, position(lsn0, j), wide)
        messages.append(_Message(f"bench.public.{table}", j, encoder.encode(2, key_schema, {"id": i}),
                                 encoder.encode(1, value_schema, value)))
    config = PostgresSinkConfig.model_validate({"dsn": "postgresql://bench/bench", "topics": ["x"]})
    retry = RetryPolicy(config.retry, RetryBudget(None), Endpoints(), _threading.Event())
    registry: Any = _Registry({1: value_schema, 2: key_schema})
    decoder = ChangeDecoder(Decoder(registry), None, TransformChain(), config.errors, retry, accelerated=lines)
    return messages, decoder


def cpu_sample(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """CPU seconds so far: of this process (`sink`), of the destination database's other client backends
    (`postgres`, the sink's connections), and of this process's threads by the Python thread's name, librdkafka's
    threads (named `rdk:*`) together as `librdkafka`, the rest as `other` (`thread:<name>`)."""
    pids = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    ).fetchall()
    sample = {"sink": time.process_time(), "postgres": sum(cpu_seconds(pid) for (pid,) in pids)}
    names = {t.native_id: t.name.rstrip("_0123456789") for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            comm, fields = (task / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            label = names.get(int(task.name)) or ("librdkafka" if comm.startswith("rdk:") else "other")
            values = fields.split()  # a task's own utime and stime (the c* fields are the process's)
            key = f"thread:{label}"
            sample[key] = sample.get(key, 0.0) + (int(values[11]) + int(values[12])) / CLOCK_TICKS
    return sample


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_apply(dsn: str, n: int, batch: int, wide: bool, upsert_heavy: bool) -> dict[str, Any]:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    config = PostgresSinkConfig.model_validate({"dsn": dsn, "topics": ["x"]})
    applier = Applier(config, "bench", TableManager(config))
    messages, decoder = make_messages(table, n, wide, upsert_heavy, int(time.time()) << 24)
    built = time.perf_counter()
    changes = decoder.decode_batch(messages).changes
    build_s = time.perf_counter() - built
    latencies = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_state(conn)
        applier.apply(conn, changes[:1], {})  # create the table outside the measurement
        started = time.perf_counter()
        for start in range(1, n, batch):
            chunk = changes[start : start + batch]
            t0 = time.perf_counter()
            applier.apply(conn, chunk, {(f"bench.public.{table}", 0): start + len(chunk)})
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return {
        "case": f"apply {'wide(31)' if wide else 'narrow(5)'} {'upsert' if upsert_heavy else 'insert'}-heavy",
        "rows_per_s": round((n - 1) / elapsed),
        "batch_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "batch_max_ms": round(max(latencies) * 1000, 1),
        "decode_per_s": round(n / build_s),  # messages -> changes, the sink's decoder
        "lines": sum(c.line is not None for c in changes),  # changes read natively into COPY lines
        "rss_mib": round(rss_mib()),
    }


class _Phases:
    """Wall time of `Applier.apply` per statement kind: each statement's round trip (client formatting + server
    + result) under its label, every other wait on the server (BEGIN, COMMIT) as `begin+commit`, and the rest of
    the batch's time as `python` (grouping, stage bookkeeping, the transaction's Python frame)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.label: str | None = None

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    @staticmethod
    def label_of(statement: Any, conn: Any) -> str:
        text = statement if isinstance(statement, str) else statement.as_string(conn)
        head = " ".join(text.split())[:60].lower()
        if "cdc.applied_changes" in head:
            return "ledger insert"
        if "cdc.sink_offsets" in head:
            return "offsets"
        if head.startswith("truncate") or head.startswith("create temp"):
            return "stage upkeep"
        if head.startswith("select") and "pg_" in head:
            return "catalog"
        return "merge into table"


PHASES = _Phases()


class _TimedCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        PHASES.label = _Phases.label_of(query, self.connection)
        t0 = time.perf_counter()
        try:
            return super().execute(query, params, **kwargs)
        finally:
            PHASES.add(PHASES.label, time.perf_counter() - t0)
            PHASES.label = None

    @contextlib.contextmanager
    def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        PHASES.label = "copy into stage"
        t0 = time.perf_counter()
        try:
            with super().copy(statement, params, **kwargs) as copy:
                yield copy
        finally:
            PHASES.add("copy into stage", time.perf_counter() - t0)
            PHASES.label = None


class _TimedConnection(psycopg.Connection[Any]):
    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if PHASES.label is not None:
            return super().wait(gen, *args, **kwargs)
        t0 = time.perf_counter()
        try:
            return super().wait(gen, *args, **kwargs)
        finally:
            PHASES.add("begin+commit", time.perf_counter() - t0)


def bench_phases(dsn: str, n: int, batch: int) -> dict[str, Any]:
    """Where `Applier.apply`'s time goes, narrow insert-heavy batches: the share of each statement kind."""
    table = f"bench_{uuid.uuid4().hex[:8]}"
    config = PostgresSinkConfig.model_validate({"dsn": dsn, "topics": ["x"]})
    applier = Applier(config, "bench", TableManager(config))
    messages, decoder = make_messages(table, n, False, False, int(time.time()) << 24)
    changes = decoder.decode_batch(messages).changes
    conn = _TimedConnection.connect(dsn, autocommit=True, cursor_factory=_TimedCursor)
    with conn:
        ensure_state(conn)
        applier.apply(conn, changes[:1], {})  # create the table outside the measurement
        PHASES.seconds.clear()
        started = time.perf_counter()
        for start in range(1, n, batch):
            chunk = changes[start : start + batch]
            applier.apply(conn, chunk, {(f"bench.public.{table}", 0): start + len(chunk)})
        elapsed = time.perf_counter() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    phases = dict(PHASES.seconds)
    phases["python"] = elapsed - sum(phases.values())
    per_row = {k: v / (n - 1) * 1e6 for k, v in phases.items()}
    shares = "  ".join(f"{k}={v:.1f}us({phases[k] / elapsed:.0%})" for k, v in
                       sorted(per_row.items(), key=lambda kv: -kv[1]))
    return {"case": "phases of apply, narrow(5) insert-heavy", "rows_per_s": round((n - 1) / elapsed),
            "us_per_row": round(elapsed / (n - 1) * 1e6, 1), "split": shares}


def bench_decode(n: int, batch: int, wide: bool) -> dict[str, Any]:
    """CPU per message of the sink's Python work that scales with rows, no Kafka and no database: decoding messages
    into changes (`ChangeDecoder.decode_batch`) and the text COPY of their rows (as `Applier._copy` sends it)."""
    from psycopg import _copy_base
    from psycopg.adapt import Transformer

    from sinks.postgres.apply import copy_values
    from sinks.postgres.copylines import line_tail

    messages, decoder = make_messages("bench", batch, wide, False, 1 << 40, lines=ACCELERATED and not NO_LINES)
    decoder.decode_batch(messages[:1])  # the schema fetch, outside the measurement
    transformer = Transformer()

    def copy_text(changes: list[Change]) -> bytes:
        shape = changes[0].shape
        names = shape.names
        converted = [(i, c.type.convert) for i, c in enumerate(shape.columns) if c.type.convert is not None]
        position = {name: i for i, name in enumerate(names)}
        out = bytearray()
        parts: list[bytes] = []
        for change in changes:
            if change.line is not None:
                parts += (change.line, line_tail(change, "u", 0))
            else:
                values = copy_values(change, "u", 0, names=names, whole=True, converted=converted, position=position)
                _copy_base.format_row_text(values, transformer, out)
        return bytes(out) + b"".join(parts)

    decode_s = copy_s = float("inf")
    rounds = max(3, n // batch)
    for _ in range(rounds):
        t0 = time.process_time()
        changes = decoder.decode_batch(messages).changes
        t1 = time.process_time()
        copy_text(changes)
        t2 = time.process_time()
        decode_s, copy_s = min(decode_s, t1 - t0), min(copy_s, t2 - t1)
    return {
        "case": f"decode+copy cpu {'wide(31)' if wide else 'narrow(5)'}",
        "rows": "python" if NO_LINES else "native lines" if changes[0].line is not None else "python (no cdc_accel)",
        "decode_us": round(decode_s / batch * 1e6, 2),
        "copy_us": round(copy_s / batch * 1e6, 2),
        "total_us": round((decode_s + copy_s) / batch * 1e6, 2),
        "rounds": rounds,
    }


def bench_executemany(dsn: str, n: int, batch: int) -> dict[str, Any]:
    """The alternative path: one INSERT ... ON CONFLICT per row via executemany (pipelined by psycopg)."""
    table = f"bench_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, s0 text, n1 bigint, d2 numeric(12,2), "
                             "t3 timestamptz, __cdc_commit_lsn bigint, __cdc_lsn bigint)").format(ident))
        statement = sql.SQL(
            "INSERT INTO {t} AS t VALUES (%s, %s, %s, %s, to_timestamp(%s), %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "s0 = EXCLUDED.s0, n1 = EXCLUDED.n1, d2 = EXCLUDED.d2, t3 = EXCLUDED.t3, "
            "__cdc_commit_lsn = EXCLUDED.__cdc_commit_lsn, __cdc_lsn = EXCLUDED.__cdc_lsn "
            "WHERE (t.__cdc_commit_lsn, t.__cdc_lsn) < (EXCLUDED.__cdc_commit_lsn, EXCLUDED.__cdc_lsn)"
        ).format(t=ident)
        ledger = sql.SQL(
            'INSERT INTO cdc.applied_changes (change_id, destination, topic, partition, "offset") '
            "VALUES (%s, %s::regclass, %s, 0, %s) ON CONFLICT DO NOTHING"
        )
        rows = [(i, f"value {i}", i, i % 1000, 1_700_000_000 + i, 2 * i + 1, 2 * i) for i in range(n)]
        ids = [(uuid.uuid4(), table, table, i) for i in range(n)]
        started = time.perf_counter()
        for start in range(0, n, batch):
            with conn.transaction(), conn.cursor() as cur:
                # Same work as the COPY path: one ledger row and one guarded upsert per change.
                cur.executemany(ledger, ids[start : start + batch])
                cur.executemany(statement, rows[start : start + batch])
        elapsed = time.perf_counter() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(ident))
    return {"case": "executemany narrow(5) insert-heavy, ledger + upsert per row", "rows_per_s": round(n / elapsed)}


def bench_ledger(dsn: str, n: int, batch: int) -> dict[str, Any]:
    """The ledger insert alone, on the destination's real `cdc.applied_changes` (its size is what matters), in
    rolled-back transactions: random ids (the earlier layout) and ordered ids, alternating."""
    statement = """INSERT INTO cdc.applied_changes (change_id, destination, topic, partition, "offset")
                   SELECT i, 1::oid, 'bench', 0, o FROM unnest(%b::uuid[], %b::bigint[]) AS x(i, o)
                   ORDER BY 1 ON CONFLICT DO NOTHING RETURNING change_id, destination"""
    spent = {"random": [], "ordered": []}
    lsn0 = int(time.time()) << 24
    offsets = list(range(batch))
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_state(conn)
        size = conn.execute("SELECT pg_relation_size('cdc.applied_changes_pkey')").fetchone()
        for start in range(0, n, batch):
            for kind in ("random", "ordered") if (start // batch) % 2 == 0 else ("ordered", "random"):
                if kind == "random":
                    ids = [uuid.uuid4() for _ in range(batch)]
                else:
                    ids = [uuid.UUID(position(lsn0, j)[2]) for j in range(start, start + batch)]
                with conn.transaction(force_rollback=True):
                    t0 = time.perf_counter()
                    conn.execute(statement, (ids, offsets), binary=True)
                    spent[kind].append(time.perf_counter() - t0)
    return {
        "case": f"ledger insert, batches of {batch}, index {(size[0] if size else 0) >> 20} MiB",
        **{f"{kind}_us_per_id": round(statistics.median(t) / batch * 1e6, 1) for kind, t in spent.items()},
    }


def produce_envelopes(topic: str, table: str, n: int, wide: bool) -> None:
    """The e2e cases' backlog: `n` envelopes of `table` in `topic`, schemas registered. Runs in a child process,
    so that the producer's buffers never count in the measuring process's peak RSS (the sink's)."""
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from connector.config import SchemaRegistryConfig
    from schemas.registry import SchemaRegistry
    from schemas.serde import Encoder

    bootstrap, registry_url = os.environ["CDC_KAFKA_BOOTSTRAP"], os.environ["CDC_SCHEMA_REGISTRY_URL"]
    value_schema, key_schema = schemas(table, wide)
    client = SchemaRegistryClient({"url": registry_url})
    registry = SchemaRegistry(SchemaRegistryConfig(url=registry_url), client=client)
    value_id = registry.register(f"{topic}-value", value_schema)
    key_id = registry.register(f"{topic}-key", key_schema)
    encoder = Encoder()
    lsn0 = int(time.time()) << 24  # later runs write higher positions, as a source would
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
    for j in range(n):
        value = envelope(table, j, 0, position(lsn0, j), wide)
        producer.produce(topic, key=encoder.encode(key_id, key_schema, {"id": j}),
                         value=encoder.encode(value_id, value_schema, value))
        if j % 10000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise SystemExit("the backlog was not acknowledged within 60 s")
    client.close()


def bench_e2e(n: int, batch: int, wide: bool, consumer: dict[str, str]) -> dict[str, Any]:
    import multiprocessing

    from confluent_kafka.admin import AdminClient, NewTopic

    from connector.config import ConnectorConfig
    from connector.pipeline import build_sink

    bootstrap, registry_url = os.environ["CDC_KAFKA_BOOTSTRAP"], os.environ["CDC_SCHEMA_REGISTRY_URL"]
    dsn = os.environ["CDC_TARGET_DSN"]
    table = f"bench_{uuid.uuid4().hex[:8]}"
    topic = f"bench.public.{table}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    producing = multiprocessing.get_context("spawn").Process(target=produce_envelopes, args=(topic, table, n, wide))
    producing.start()
    producing.join()
    if producing.exitcode != 0:
        raise SystemExit(f"producing the backlog failed (exit {producing.exitcode})")
    config = ConnectorConfig.model_validate({
        "name": f"bench-{table}", "kafka": {"bootstrap_servers": bootstrap},
        "schema_registry": {"url": registry_url},
        "sink": {"dsn": dsn, "topics": [topic], "batch": {"max_records": batch, "max_wait_ms": 500}},
    })
    sink = build_sink(config)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        thread.start()
        first = last = None
        cpu_first: dict[str, float] = {}
        cpu_last: dict[str, float] = {}
        while True:
            exists = conn.execute("SELECT to_regclass('cdc.sink_offsets') IS NOT NULL").fetchone()
            found = None
            if exists and exists[0]:
                found = conn.execute("SELECT next_offset FROM cdc.sink_offsets WHERE group_id = %s AND topic = %s",
                                     (config.group_id, topic)).fetchone()
            now = time.perf_counter()
            if found and first is None:
                first, cpu_first = (now, found[0]), cpu_sample(conn)
            if found and found[0] >= n:
                last, cpu_last = (now, found[0]), cpu_sample(conn)
                break
            if not thread.is_alive():
                raise SystemExit("sink stopped")
            time.sleep(0.05)
        stop.set()
        thread.join(60)
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    assert first is not None and last is not None
    applied = max(last[1] - first[1], 1)
    rate = applied / max(last[0] - first[0], 1e-9)
    per_row = {k: round((v - cpu_first.get(k, 0.0)) / applied * 1e6, 1) for k, v in cpu_last.items()}
    return {"case": f"e2e kafka->pg {'wide(31)' if wide else 'narrow(5)'} insert-heavy",
            "reader": "compiled" if ACCELERATED else "pure",  # CDC_ACCEL=0: the pure-Python Avro reader
            "rows_per_s": round(rate), "rss_mib": round(rss_mib()),
            # CPU per applied row over the same span: this process (the sink's threads; the bench's polling is
            # negligible) and the destination's backends (the sink's connections).
            **{f"cpu_us_per_row_{k}": per_row[k] for k in ("sink", "postgres")},
            "cpu_us_per_row_by_thread": {k[7:]: v for k, v in per_row.items() if k.startswith("thread:")},
            **({"consumer": consumer} if consumer else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--e2e", action="store_true", help="also measure Kafka -> sink -> PostgreSQL")
    parser.add_argument("--ids", choices=("ordered", "random"), default="ordered")
    parser.add_argument("--only", nargs="*", help="cases to run, in this order (repeats allowed)")
    parser.add_argument("--consumer", action="append", default=[], metavar="KEY=VALUE",
                        help="e2e: a librdkafka consumer property of the sink (repeatable)")
    parser.add_argument("--no-lines", action="store_true", help="decode: rows as Python values (the pure glue)")
    args = parser.parse_args()
    global RANDOM_IDS, NO_LINES
    RANDOM_IDS = args.ids == "random"
    NO_LINES = args.no_lines
    load_env()
    dsn = os.environ["CDC_TARGET_DSN"]
    consumer = dict(item.split("=", 1) for item in args.consumer)
    cases = {
        "apply": lambda: bench_apply(dsn, args.rows, args.batch, wide=False, upsert_heavy=False),
        "upsert": lambda: bench_apply(dsn, args.rows, args.batch, wide=False, upsert_heavy=True),
        "wide": lambda: bench_apply(dsn, args.rows // 4, args.batch, wide=True, upsert_heavy=False),
        "wide-upsert": lambda: bench_apply(dsn, args.rows // 4, args.batch, wide=True, upsert_heavy=True),
        "phases": lambda: bench_phases(dsn, args.rows, args.batch),
        "executemany": lambda: bench_executemany(dsn, min(args.rows, 50_000), args.batch),
        "ledger": lambda: bench_ledger(dsn, args.rows, args.batch),
        "decode": lambda: bench_decode(args.rows, args.batch, wide=False),
        "decode-wide": lambda: bench_decode(args.rows, args.batch, wide=True),
        "e2e": lambda: bench_e2e(args.rows, args.batch, wide=False, consumer=consumer),
        "e2e-wide": lambda: bench_e2e(args.rows // 4, args.batch, wide=True, consumer=consumer),
    }
    only_named = ("decode", "phases")
    chosen = args.only or [c for c in cases if (args.e2e or not c.startswith("e2e")) and not c.startswith(only_named)]
    for name in chosen:
        print(f"ids={args.ids}  " + "  ".join(f"{k}={v}" for k, v in cases[name]().items()), flush=True)


if __name__ == "__main__":
    main()
