"""Per-message cost of a three-transform source chain (route + mask + unwrap) on a realistic envelope.

Run: `python bench/transforms_bench.py [--messages N]`. Prints µs/message for the chain and for each
transform alone (schemas are derived on the first message and cached, as in production).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from core.records import Record
from schemas.catalog import ColumnInfo, PgType, TableInfo
from schemas.envelope import build_table_schemas, source_block
from transforms import build_chain

CHAIN: list[Mapping[str, Any]] = [
    {"type": "route", "regex": r"shop\.public\.(.*)", "replacement": "shop.$1"},
    {"type": "mask", "fields": ["email"], "mode": "hash", "salt": "bench-salt"},
    {"type": "unwrap", "add_fields": ["op", "source.ts_ms"]},
]


def _column(name: str, typname: str, attnum: int, *, key: bool = False, typmod: int = -1) -> ColumnInfo:
    category = {"int8": "N", "numeric": "N", "bool": "B"}.get(typname, "S")
    pg = PgType(oid=attnum, name=typname, typname=typname, schema="pg_catalog", kind="b", category=category)
    return ColumnInfo(
        name=name, attnum=attnum, type_oid=pg.oid, type_name=typname, not_null=key, key_position=1 if key else None,
        base_kind="b", resolved=pg, typmod=typmod, toastable=False, generated=False,
    )  # fmt: skip


def envelopes(count: int) -> list[Record]:
    """A customers table (8 columns), a mix of inserts and updates with distinct rows."""
    columns = (
        _column("id", "int8", 1, key=True),
        _column("email", "text", 2),
        _column("name", "text", 3),
        _column("city", "text", 4),
        _column("amount", "numeric", 5, typmod=((10 << 16) | 2) + 4),
        _column("created_at", "timestamptz", 6),
        _column("updated_at", "timestamptz", 7),
        _column("active", "bool", 8),
    )
    table = TableInfo(schema="public", name="customers", oid=1, replica_identity="d", columns=columns,
                      has_primary_key=True)  # fmt: skip
    tables = build_table_schemas(table, topic="shop.public.customers", topic_prefix="shop")
    records = []
    for i in range(count):
        micros = 1_704_164_645_123_456 + i
        row = {"id": i, "email": f"user{i}@example.com", "name": f"User {i}", "city": "Lyon",
               "amount": Decimal("12.50"), "created_at": micros, "updated_at": micros,
               "active": bool(i % 2)}  # fmt: skip
        op = "c" if i % 3 else "u"
        source = source_block(name="shop", db="app", schema="public", table="customers", ts_ms=1_704_164_645_123 + i,
                              lsn=1000 + i, commit_lsn=2000 + i, tx_id=i)  # fmt: skip
        value = tables.envelope(op=op, before=row if op == "u" else None, after=row, source=source, ts_ms=None,
                                change_id=f"00000000-0000-5000-8000-{i:012d}")  # fmt: skip
        headers = (("change_id", value["change_id"].encode()), ("source_lsn", f"{2000 + i}:{1000 + i}".encode()))
        records.append(Record(tables.topic, tables.key(row), value, tables.key_schema, tables.value_schema, headers))
    return records


def measure(specs: Sequence[Mapping[str, Any]], records: Sequence[Record], rounds: int) -> float:
    """Best-of-`rounds` µs per message (the best round is the least disturbed by other processes)."""
    chain = build_chain(specs, side="source")
    chain.apply(records[0])  # derive and cache the schemas
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for record in records:
            chain.apply(record)
        best = min(best, time.perf_counter() - started)
    return best / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    records = envelopes(args.messages)
    chain = measure(CHAIN, records, args.rounds)
    print(f"route + mask(hash) + unwrap: {chain:.2f} µs/message ({1e6 / chain:,.0f} messages/s on one core)")
    for spec in CHAIN:
        print(f"  {spec['type']:>8} alone: {measure([spec], records, args.rounds):.2f} µs/message")
    print(f"  {'empty':>8} chain: {measure([], records, args.rounds):.2f} µs/message")


if __name__ == "__main__":
    main()
