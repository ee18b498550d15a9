"""Records -> changes (envelopes and flat records), collapsing per key, names and config checks."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg.adapt import PyFormat, Transformer
from pydantic import ValidationError

from core.errors import ConfigError, PoisonMessageError
from core.records import AvroSchema, Record
from schemas.envelope import build_table_schemas
from sinks.postgres.changes import collapse, shape_of, split_at_truncates, to_changes
from sinks.postgres.config import PostgresSinkConfig, parse_duration
from sinks.postgres.snapshots import SnapshotCleanup
from sinks.postgres.tables import TableName, check_identifier, destination_of
from tests.unit.schemas.schemas_support import array_of, column, numeric_typmod, pg_type, table

pytestmark = pytest.mark.unit

VALUE = {
    "type": "record", "name": "Value", "namespace": "p.s.t",
    "fields": [
        {"name": "id", "type": "int", "pg.type": "integer"},
        {"name": "v", "type": ["null", "string"], "pg.type": "text"},
        {"name": "Odd_name", "type": ["null", "string"], "pg.type": "text", "pg.name": "Odd name"},
    ],
}
ENVELOPE = AvroSchema.of({
    "type": "record", "name": "Envelope", "namespace": "p.s.t",
    "fields": [
        {"name": "before", "type": ["null", VALUE]},
        {"name": "after", "type": ["null", "p.s.t.Value"]},
        {"name": "source", "type": {"type": "record", "name": "Source", "fields": []}},
        {"name": "op", "type": "string"},
        {"name": "change_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}},
    ],
})
KEY = AvroSchema.of({"type": "record", "name": "Key", "namespace": "p.s.t",
                     "fields": [{"name": "id", "type": "int", "pg.type": "integer"}]})
FLAT = AvroSchema.of({**VALUE, "fields": [*VALUE["fields"], {"name": "__deleted", "type": "string"}]})


def envelope(op: str, key: int, v: str | None, lsn: int, toast: tuple[str, ...] = ()) -> Record:
    row = {"id": key, "v": v, "Odd_name": "o"}
    value = {
        "before": row if op == "d" else None, "after": None if op in "dt" else row,
        "source": {"schema": "s", "table": "t", "lsn": lsn, "commit_lsn": lsn + 1},
        "op": op, "change_id": str(uuid.uuid4()), "unchanged_toast": list(toast),
    }
    return Record("p.s.t", None if op == "t" else {"id": key}, value, None if op == "t" else KEY, ENVELOPE,
                  partition=0, offset=lsn)


def test_envelope_becomes_a_change_with_position_and_column_names() -> None:
    [change] = to_changes(envelope("u", 7, "x", 100, toast=("Odd name",)))
    assert change.op == "u"
    assert change.position == (101, 100)
    assert (change.source_schema, change.source_table) == ("s", "t")
    assert change.row == {"id": 7, "v": "x", "Odd name": "o"}
    assert change.key == {"id": 7}
    assert change.unchanged_toast == frozenset({"Odd name"})
    assert change.shape.key == ("id",)


def test_a_change_cannot_be_altered_and_copies_keep_the_original() -> None:
    [change] = to_changes(envelope("u", 7, "x", 100, toast=("Odd name",)))
    with pytest.raises(AttributeError):
        change.op = "d"  # type: ignore[misc]
    previous = to_changes(envelope("c", 7, "x", 90))[0]
    [merged] = collapse([previous, change])
    assert merged is not change and merged.row is not None and merged.row["Odd name"] == "o"
    assert merged.unchanged_toast == frozenset() and change.unchanged_toast == frozenset({"Odd name"})
    assert (merged.change_id, merged.position) == (change.change_id, change.position)


def headers(change_id: str, position: str = "5:4") -> tuple[tuple[str, bytes], ...]:
    return (("change_id", change_id.encode()), ("source_lsn", position.encode()))


def test_flat_records_take_identity_and_position_from_headers() -> None:
    cid = str(uuid.uuid4())
    record = Record("p.s.t", {"id": 1}, {"id": 1, "v": "a", "Odd_name": None, "__deleted": "true"}, KEY, FLAT,
                    headers=headers(cid, "10:9"), partition=0, offset=3)
    [change] = to_changes(record)
    assert change.op == "d"
    assert change.change_id == uuid.UUID(cid)
    assert change.position == (10, 9)
    assert "__deleted" not in change.shape.names


def test_tombstones_delete_only_with_a_change_id() -> None:
    assert to_changes(Record("p.s.t", {"id": 1}, None, KEY, None, partition=0, offset=1)) == []
    cid = str(uuid.uuid4())
    [change] = to_changes(Record("p.s.t", {"id": 1}, None, KEY, None, headers=headers(cid), partition=0, offset=1))
    assert (change.op, change.key, change.shape.key_only) == ("d", {"id": 1}, True)


@pytest.mark.parametrize(
    "record",
    [
        Record("p.s.t", {"id": 1}, {"id": 1, "v": "a"}, KEY, FLAT, partition=0, offset=1),  # no change_id header
        Record("p.s.t", {"id": 1}, {"id": 1}, KEY, FLAT, headers=(("change_id", b"not-a-uuid"),
                                                                   ("source_lsn", b"1:1")), partition=0, offset=1),
        Record("p.s.t", {"id": 1}, {"id": 1}, KEY, FLAT, headers=(("change_id", str(uuid.uuid4()).encode()),
                                                                   ("source_lsn", b"x")), partition=0, offset=1),
    ],
)
def test_malformed_records_are_poison(record: Record) -> None:
    with pytest.raises(PoisonMessageError):
        to_changes(record)


def test_collapse_keeps_the_last_change_per_key_and_fills_unchanged_toast() -> None:
    changes = [c for r in (envelope("c", 1, "a", 10), envelope("u", 1, None, 20, toast=("v",)),
                           envelope("c", 2, "b", 30), envelope("d", 2, "b", 40)) for c in to_changes(r)]
    last = collapse(changes)
    assert [(c.key, c.op) for c in last] == [({"id": 1}, "u"), ({"id": 2}, "d")]
    assert last[0].row is not None and last[0].row["v"] == "a"
    assert last[0].unchanged_toast == frozenset()


def test_truncates_split_runs() -> None:
    changes = [c for r in (envelope("c", 1, "a", 10), envelope("t", 0, None, 20), envelope("c", 2, "b", 30))
               for c in to_changes(r)]
    segments = split_at_truncates(changes)
    assert [([c.op for c in run], end.op if end else None) for run, end in segments] == [
        (["c"], "t"), (["c"], None)]


@pytest.mark.parametrize("name", ["x" * 64, "é" * 32, "a\x00b", ""])
def test_names_postgres_cannot_keep_exactly_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        check_identifier(name, "table")


def test_hostile_but_valid_names_pass_unchanged() -> None:
    for name in ['Robert"); DROP TABLE x;--', "select", "ünï 表", "x" * 63]:
        assert check_identifier(name, "table") == name


def config(**values: Any) -> PostgresSinkConfig:
    return PostgresSinkConfig.model_validate({"dsn": "postgresql://x", "topics": ["p.s.t"], **values})


def test_destination_names_from_format_or_map() -> None:
    [change] = to_changes(envelope("c", 1, "a", 10))
    assert str(destination_of(change, config(table_name_format="{schema}_{table}"))) == "public.s_t"
    mapped = config(table_map={"p.s.t": "Other"}, target_schema="replica")
    assert (destination_of(change, mapped).schema, destination_of(change, mapped).name) == ("replica", "Other")


@pytest.mark.parametrize(
    "values",
    [{"topics": []}, {"table_name_format": "{nope}"}, {"errors": {"tolerance": "all"}},
     {"dedupe": {"retention": "7 weeks"}}, {"retry": {"initial_backoff_ms": 10, "max_backoff_ms": 5}}],
)
def test_config_mistakes_are_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        config(**values)


def test_durations() -> None:
    assert parse_duration("7d").total_seconds() == 7 * 86400
    assert parse_duration("30m").total_seconds() == 1800
    assert parse_duration("500ms").total_seconds() == 0.5


def test_the_sources_numeric_arrays_map_to_numeric_array_columns() -> None:
    """The source defines VariableScaleDecimal once per schema and refers to it by name afterwards (here in an
    array's items): the sink resolves the reference wherever it stands, and writes NaN among the elements."""
    numeric = pg_type("numeric")
    schemas = build_table_schemas(
        table(
            column("id", "int4", not_null=True, key_position=1),
            column("n", numeric),
            column("a", array_of(numeric)),
            column("b", array_of(numeric), typmod=numeric_typmod(5, 1), type_name="numeric(5,1)[]"),
        ),
        topic="p.public.t",
        topic_prefix="p",
    )
    assert schemas.key_schema is not None
    shape = shape_of(schemas.value_schema, schemas.key_schema)
    types = {c.name: c.type for c in shape.columns}
    assert {name: str(t.pg_type) for name, t in types.items()} == {
        "id": "integer", "n": "numeric", "a": "numeric[]", "b": "numeric(5,1)[]",
    }  # fmt: skip
    row, _ = schemas.row(["1", "-1.50", "{1.5,NaN,NULL,-Infinity,0.00000000000000000001}", "{1.5,NaN,NULL}"])
    written = {}
    for name in ("a", "b"):
        convert = types[name].convert
        assert convert is not None
        written[name] = bytes(Transformer().dump_sequence([convert(row[name])], [PyFormat.TEXT])[0] or b"")
    assert written == {"a": b"{1.5,NaN,NULL,-Infinity,0.00000000000000000001}", "b": b"{1.5,NaN,NULL}"}


# --- snapshot-complete markers -------------------------------------------------------------------


def marker(headers: dict[str, bytes], key: Any = None) -> Record:
    return Record("p.s.t", key, None, KEY if key is not None else None, None, tuple(headers.items()),
                  partition=2, offset=40)


MARKER_ID = str(uuid.uuid4())
MARKER_HEADERS = {
    "change_id": MARKER_ID.encode(),
    "source_lsn": b"5000:5000",
    "cdc.snapshot.complete": b'{"schema":"s","table":"t.x"}',
}


def test_snapshot_complete_marker_becomes_a_truncate_just_below_the_snapshot_rows() -> None:
    [change] = to_changes(marker(MARKER_HEADERS))
    assert change.snapshot_complete and change.op == "t"
    assert change.change_id == uuid.UUID(MARKER_ID)
    assert (change.source_schema, change.source_table) == ("s", "t.x")  # from the header, not the topic
    assert (change.partition, change.offset) == (2, 40)
    # Below a row of this snapshot (5000, 5000) and any change streamed after it; above anything before.
    assert (4999, 10**12) < change.position < (5000, 5000)
    assert change.key is None and change.row is None
    assert split_at_truncates([change]) == [([], change), ([], None)]


def test_plain_tombstones_are_not_markers() -> None:
    assert to_changes(marker({"change_id": MARKER_ID.encode(), "source_lsn": b"1:1"})) == []
    [delete] = to_changes(marker({"change_id": MARKER_ID.encode(), "source_lsn": b"1:1"}, key={"id": 3}))
    assert delete.op == "d" and not delete.snapshot_complete


@pytest.mark.parametrize(
    "headers",
    [
        {**MARKER_HEADERS, "cdc.snapshot.complete": b"s.t"},
        {**MARKER_HEADERS, "cdc.snapshot.complete": b'{"schema":"s"}'},
        {**MARKER_HEADERS, "cdc.snapshot.complete": b'{"schema":1,"table":"t"}'},
        {k: v for k, v in MARKER_HEADERS.items() if k != "source_lsn"},
        {k: v for k, v in MARKER_HEADERS.items() if k != "change_id"},
    ],
    ids=["not-json", "no-table", "not-text", "no-position", "no-id"],
)
def test_a_malformed_marker_is_poison(headers: dict[str, bytes]) -> None:
    with pytest.raises(PoisonMessageError):
        to_changes(marker(headers))


def test_snapshot_cleanup_applies_to_a_table_of_one_source_table_only(caplog: pytest.LogCaptureFixture) -> None:
    base = {"dsn": "postgresql://x", "topics": ["a"]}
    table = TableName("public", "t")
    cleanup = SnapshotCleanup(PostgresSinkConfig.model_validate(base))
    assert cleanup.applies(table)  # a marker before any row (an empty source table) still cleans up
    cleanup.saw(table, ("p.s.t", "s", "t"))
    cleanup.saw(table, ("p.s.t", "s", "t"))
    assert cleanup.applies(table)
    cleanup.saw(TableName("public", "other"), ("p.s.u", "s", "u"))
    assert cleanup.applies(table)
    cleanup.saw(table, ("q.s.t", "s", "t"))  # a second shard merged into the same table
    with caplog.at_level("WARNING"):
        assert not cleanup.applies(table)
        assert not cleanup.applies(table)
    assert len([r for r in caplog.records if "fed by 2 source tables" in r.getMessage()]) == 1
    off = SnapshotCleanup(PostgresSinkConfig.model_validate({**base, "snapshot_cleanup": False}))
    append = SnapshotCleanup(PostgresSinkConfig.model_validate({**base, "mode": "append"}))
    assert not off.applies(table) and not append.applies(table)


def test_shape_reads_defaults_and_aliases_of_fields() -> None:
    from core.records import AvroSchema
    from sinks.postgres.changes import shape_of

    value = AvroSchema.of({"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "int"},
        {"name": "d", "type": ["null", "string"], "default": None, "pg.default": "dflt"},
        {"name": "kept", "type": ["null", "string"], "default": None, "aliases": ["keep"]},
    ]})  # fmt: skip
    key = AvroSchema.of({"type": "record", "name": "Key", "fields": [{"name": "id", "type": "int"}]})
    columns = {c.name: c for c in shape_of(value, key).columns}
    assert (columns["d"].default, columns["d"].aliases) == ("dflt", ())
    assert (columns["kept"].default, columns["kept"].aliases) == (None, ("keep",))
    assert (columns["id"].default, columns["id"].aliases) == (None, ())
