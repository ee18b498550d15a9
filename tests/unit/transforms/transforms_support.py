"""Realistic change events for transform tests, and the check every transform test runs on its output.

Envelopes come from the schemas package (`build_table_schemas`), so they have the exact shape the
source produces: `Value` defined in `before` and named in `after`, `connect.name`, `pg.type`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import fastavro
from fastavro.validation import validate

from core.records import AvroSchema, Record
from schemas.envelope import TableSchemas, build_table_schemas, source_block
from tests.unit.schemas.schemas_support import column, numeric_typmod, table
from transforms import TransformSpec, build_chain

CHANGE_ID = "0b4f7c39-5d5e-5a8e-9a49-4f3c2e1d0a11"
COMMIT_MS = 1_704_164_645_123  # 2024-01-02T03:04:05.123Z


def customers(prefix: str = "shop", name: str = "customers", schema: str = "public") -> TableSchemas:
    return build_table_schemas(
        table(
            column("id", "int8", not_null=True, key_position=1),
            column("email", "text", not_null=True),
            column("name", "text"),
            column("amount", "numeric", typmod=numeric_typmod(10, 2)),
            column("created_at", "timestamptz"),
            column("active", "bool"),
            schema=schema,
            name=name,
        ),
        topic=f"{prefix}.{schema}.{name}",
        topic_prefix=prefix,
    )


ROW = {
    "id": 7,
    "email": "ada@example.com",
    "name": "Ada",
    "amount": Decimal("12.50"),
    "created_at": 1_704_164_645_123_456,
    "active": True,
}


DEFAULT_HEADERS = (("change_id", CHANGE_ID.encode()), ("source_lsn", b"1008:1000"))


def event(
    op: str = "c",
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    tables: TableSchemas | None = None,
    lsn: int = 1000,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> Record:
    """One change event as the source produces it (headers `change_id` and `source_lsn`)."""
    ts = tables or customers()
    if op in ("c", "r", "u") and after is None:
        after = ROW
    if op == "d" and before is None:
        before = {**dict.fromkeys(ROW), "id": ROW["id"]}
    source = source_block(
        name="shop", db="app", schema=ts.table.schema, table=ts.table.name, ts_ms=COMMIT_MS, lsn=lsn,
        commit_lsn=lsn + 8, tx_id=42,
    )  # fmt: skip
    value = ts.envelope(
        op=op, before=dict(before) if before else None, after=dict(after) if after else None, source=source,
        ts_ms=COMMIT_MS + 5, change_id=CHANGE_ID,
    )  # fmt: skip
    row = after or before or ROW
    return Record(
        topic=ts.topic,
        key=ts.key(row) if op != "t" else None,
        value=value,
        key_schema=ts.key_schema if op != "t" else None,
        value_schema=ts.value_schema,
        headers=tuple(headers) if headers is not None else DEFAULT_HEADERS,
    )


def tombstone(tables: TableSchemas | None = None, row: Mapping[str, Any] = ROW) -> Record:
    ts = tables or customers()
    return Record(ts.topic, ts.key(row), None, ts.key_schema, ts.value_schema, (("change_id", CHANGE_ID.encode()),))


def assert_valid(records: Iterable[Record]) -> list[Record]:
    """Every schema parses with fastavro and every key and value validates against its schema."""
    out = list(records)
    for record in out:
        for data, schema in ((record.key, record.key_schema), (record.value, record.value_schema)):
            if schema is None:
                continue
            # A schema must be the same after a JSON round trip (what the registry stores).
            assert AvroSchema.parse(schema.text) == schema
            parsed = fastavro.parse_schema(copy.deepcopy(schema.definition))
            if data is not None:
                assert validate(data, parsed, raise_errors=True)
    return out


def run(specs: Sequence[Mapping[str, Any] | TransformSpec], *records: Record, side: str = "source") -> list[Record]:
    """Build a chain from specs (dicts as in YAML), apply it to each record, check and return the output."""
    chain = build_chain(specs, side=side)  # type: ignore[arg-type]
    out: list[Record] = []
    for record in assert_valid(records):
        out.extend(chain.apply(record))
    return assert_valid(out)


def row_fields(schema: AvroSchema | None) -> list[str]:
    """Field names of the row record of an envelope schema (or of a flat record schema)."""
    assert schema is not None
    definition = schema.definition
    names = [f["name"] for f in definition["fields"]]
    if {"before", "after", "op", "source"} <= set(names):
        before = next(f for f in definition["fields"] if f["name"] == "before")
        row = next(b for b in before["type"] if isinstance(b, dict))
        return [f["name"] for f in row["fields"]]
    return names


def field_type(schema: AvroSchema | None, name: str) -> Any:
    assert schema is not None
    definition = schema.definition
    names = [f["name"] for f in definition["fields"]]
    if "before" in names and "after" in names:
        before = next(f for f in definition["fields"] if f["name"] == "before")
        definition = next(b for b in before["type"] if isinstance(b, dict))
    return next(f for f in definition["fields"] if f["name"] == name)["type"]
