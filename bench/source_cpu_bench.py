"""CPU per event of the source's in-process hot path, without any service: pgoutput bytes -> Kafka wire bytes.

    python bench/source_cpu_bench.py [--events 200000] [--style debezium|avro_native] [--rounds 5] [--profile] [--kafka]

Runs what the streamer does for each streamed insert of the narrow `bench/source_bench.py` table (bigint key,
text, numeric(12,2), timestamptz, boolean): decode the pgoutput message, build the event (row conversion, change
id), write key and envelope bytes, and hand them to a producer. The producer is a counter unless `--kafka`
(then a real `KafkaDelivery` to the local broker of `.cdc/dev.env`, acknowledgements awaited at the end).
On a shared machine this is the steady figure to compare changes with; source_bench.py measures the whole path.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.config_loader import read_env_file  # noqa: E402
from core.delivery import AckTracker, KafkaDelivery  # noqa: E402
from core.records import AvroSchema  # noqa: E402
from schemas.catalog import ColumnInfo, PgType, TableInfo  # noqa: E402
from schemas.envelope import build_table_schemas  # noqa: E402
from schemas.types import DecimalHandling, SchemaStyle  # noqa: E402
from sources.postgres.change_id import ChangeIds, namespace_for  # noqa: E402
from sources.postgres.events import ChangeEncoder, TableEvents  # noqa: E402
from sources.postgres.protocol import decode_message  # noqa: E402


def _type(typname: str, category: str) -> PgType:
    return PgType(oid=1, name=typname, typname=typname, schema="pg_catalog", kind="b", category=category)


def narrow_table() -> TableInfo:
    specs = [("id", "int8", "N", True, -1), ("name", "text", "S", False, -1),
             ("amount", "numeric", "N", False, ((12 << 16) | 2) + 4), ("created", "timestamptz", "D", False, -1),
             ("flag", "bool", "B", False, -1)]  # fmt: skip
    columns = tuple(
        ColumnInfo(
            name=name,
            attnum=i,
            type_oid=1,
            type_name=typname,
            not_null=key,
            key_position=1 if key else None,
            base_kind="b",
            resolved=_type(typname, category),
            typmod=typmod,
        )
        for i, (name, typname, category, key, typmod) in enumerate(specs, start=1)
    )
    return TableInfo(schema="public", name="narrow", oid=1, replica_identity="d", columns=columns, has_primary_key=True)


def insert_payload(g: int) -> bytes:
    texts = [str(g), f"name {g}", f"{g * 1.5:.2f}", "2026-12-02 11:51:31.123456+00", "t" if g % 2 == 0 else "f"]
    out = bytearray(b"I" + struct.pack("!I", 16384) + b"N" + struct.pack("!h", len(texts)))
    for text in texts:
        data = text.encode()
        out += b"t" + struct.pack("!I", len(data)) + data
    return bytes(out)


class _Ids:
    def __init__(self) -> None:
        self.ids: dict[tuple[str, bool, str], int] = {}

    def __call__(self, topic: str, schema: AvroSchema, is_key: bool) -> int:
        return self.ids.setdefault((topic, is_key, schema.text), len(self.ids) + 1)


class _CountingProducer:
    def __init__(self) -> None:
        self.tracker = AckTracker()
        self.count = 0

    def produce_raw(self, topic: str, key: Any, value: Any, headers: Any, slot: Any) -> None:
        self.count += 1


def endpoints() -> dict[str, str]:
    """The environment, completed by the local stack's `.cdc/dev.env` (the environment wins)."""
    dev = ROOT / ".cdc" / "dev.env"
    return {**(read_env_file(dev) if dev.is_file() else {}), **os.environ}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--style", choices=[s.value for s in SchemaStyle], default=SchemaStyle.DEBEZIUM.value)
    parser.add_argument("--tx-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="repeat; the best round's figures are reported")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--kafka", action="store_true", help="produce to the local Kafka instead of a counter")
    args = parser.parse_args()
    prefix = f"cpubench_{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.public.narrow"
    schemas = build_table_schemas(
        narrow_table(), topic=topic, topic_prefix=prefix, decimal_handling=DecimalHandling.PRECISE,
        schema_style=SchemaStyle(args.style),
    )  # fmt: skip
    events = TableEvents(schemas, connector_name="bench", db="source", ids=ChangeIds(namespace_for("7", "source")),
                         tombstones=True)  # fmt: skip
    encoder = ChangeEncoder(_Ids())
    payloads = [insert_payload(g) for g in range(1, min(args.events, 10_000) + 1)]
    producer: Any = _CountingProducer()
    if args.kafka:
        env = endpoints()
        producer = KafkaDelivery(env["CDC_KAFKA_BOOTSTRAP"], {}, serializer=None)  # type: ignore[arg-type]
        producer.ensure_topics([topic])

    def run() -> None:
        tracker = producer.tracker
        n = len(payloads)
        lsn = 1 << 32
        for start in range(0, args.events, args.tx_size):
            slot = tracker.open()
            commit_lsn = lsn + 100 * args.tx_size
            for ordinal, i in enumerate(range(start, min(args.events, start + args.tx_size))):
                lsn += 100
                message = decode_message(payloads[i % n])
                changes = events.changes(message, lsn=lsn, commit_lsn=commit_lsn, ordinal=ordinal, xid=7,  # type: ignore[arg-type]
                                         commit_ms=1_700_000_000_000)  # fmt: skip
                for key, value, headers in encoder.encode(events, changes):
                    producer.produce_raw(topic, key, value, headers, slot)
            tracker.close(slot, commit_lsn)
        if args.kafka:
            producer.flush()

    profiler = cProfile.Profile() if args.profile else None
    best: tuple[float, float] | None = None
    for _ in range(1 if profiler is not None else args.rounds):
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.runcall(run)
        else:
            run()
        figures = (time.process_time() - cpu0, time.perf_counter() - t0)
        best = figures if best is None or figures < best else best
    assert best is not None
    cpu, elapsed = best
    print(f"{args.style}: {args.events} events in {elapsed:.2f}s = {args.events / elapsed:,.0f} events/s; "
          f"CPU {1e6 * cpu / args.events:.2f} us/event ({'Kafka' if args.kafka else 'no producer'}; best of "
          f"{args.rounds}; load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
