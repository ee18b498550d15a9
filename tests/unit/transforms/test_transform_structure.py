"""unwrap, hoist, extract_field, value_to_key, headers, outbox and python transforms: records and schemas."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.records import SNAPSHOT_COMPLETE_HEADER, Record
from schemas.envelope import build_table_schemas
from tests.unit.schemas.schemas_support import column, table
from tests.unit.transforms.transforms_support import (
    CHANGE_ID,
    COMMIT_MS,
    ROW,
    customers,
    event,
    field_type,
    row_fields,
    run,
    tombstone,
)
from transforms.exceptions import TransformError

pytestmark = pytest.mark.unit


# --- unwrap -----------------------------------------------------------------------------------


def test_unwrap_gives_the_after_row_with_a_standalone_schema_and_keeps_headers() -> None:
    record = event("u", before=ROW)
    [out] = run([{"type": "unwrap"}], record)
    assert out.value == ROW
    assert out.value_schema is not None
    assert out.value_schema.name == "shop.public.customers.Value"
    assert row_fields(out.value_schema) == list(ROW)
    assert out.headers == record.headers  # the sink needs change_id after unwrap
    assert out.key == record.key and out.key_schema == record.key_schema


def test_unwrap_delete_handling_and_tombstones() -> None:
    delete, dead = event("d"), tombstone()
    assert run([{"type": "unwrap"}], delete, dead) == []
    kept = run([{"type": "unwrap", "delete_handling": "tombstone", "drop_tombstones": False}], delete, dead)
    assert [r.value for r in kept] == [None, None]
    assert kept[0].key == {"id": 7} and kept[0].headers == delete.headers

    rewritten = run([{"type": "unwrap", "delete_handling": "rewrite"}], event("c"), delete)
    assert rewritten[0].value["__deleted"] == "false"
    assert rewritten[1].value == {**dict.fromkeys(ROW), "id": 7, "__deleted": "true"}
    assert field_type(rewritten[1].value_schema, "__deleted") == "string"


def test_unwrap_keeps_a_snapshot_complete_marker_while_dropping_tombstones() -> None:
    marker = Record("shop.public.customers", None, None, None, None,
                    (("change_id", CHANGE_ID.encode()), (SNAPSHOT_COMPLETE_HEADER, b'{"schema":"public","table":"c"}')))
    assert run([{"type": "unwrap"}], tombstone(), marker) == [marker]
    assert run([{"type": "route", "regex": "shop\\.(.*)", "replacement": "all.$1"}, {"type": "unwrap"}], marker) == [
        Record("all.public.customers", None, None, None, None, marker.headers)
    ]


def test_unwrap_add_fields_and_headers() -> None:
    spec = {"type": "unwrap", "add_fields": ["op", "source.ts_ms", "lsn", "change_id", "table"],
            "add_headers": ["op", "source.commit_lsn"]}  # fmt: skip
    [out] = run([spec], event("c", lsn=500))
    value = out.value
    assert (value["__op"], value["__source_ts_ms"], value["__lsn"], value["__change_id"], value["__table"]) == (
        "c", COMMIT_MS, 500, CHANGE_ID, "customers"
    )
    assert field_type(out.value_schema, "__source_ts_ms") == "long"
    assert field_type(out.value_schema, "__lsn") == ["null", "long"]
    assert out.header("__op") == b"c" and out.header("__source_commit_lsn") == b"508"
    assert out.header("change_id") == CHANGE_ID.encode()


def test_unwrap_errors_and_truncates() -> None:
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(unwrap\): option `add_fields`: `nope` is neither"):
        run([{"type": "unwrap", "add_fields": ["nope"]}], event())
    with pytest.raises(ConfigError, match=r"option `add_fields`: .* already has a field `name`"):
        run([{"type": "unwrap", "prefix": "", "add_fields": ["name"]}], event())
    with pytest.raises(ConfigError, match=r"option `delete_handling`: Input should be 'drop', 'tombstone' or"):
        run([{"type": "unwrap", "delete_handling": "soft"}], event())
    truncate = event("t")
    assert run([{"type": "unwrap"}], truncate) == []
    assert run([{"type": "unwrap", "truncate_handling": "keep"}], truncate) == [truncate]


def test_unwrap_passes_records_that_are_not_envelopes() -> None:
    [flat] = run([{"type": "unwrap"}], event())
    assert run([{"type": "unwrap"}], flat) == [flat]


# --- hoist / extract_field --------------------------------------------------------------------


def test_extract_field_after_inlines_the_named_row_type() -> None:
    [out] = run([{"type": "extract_field", "field": "after"}], event("u", before=ROW))
    assert out.value == ROW
    assert isinstance(out.value_schema.definition, list)  # ["null", Value] with Value defined inline
    assert out.value_schema.definition[1]["name"] == "shop.public.customers.Value"
    [deleted] = run([{"type": "extract_field", "field": "after"}], event("d"))
    assert deleted.value is None


def test_extract_field_from_key_and_nested_path() -> None:
    [out] = run([{"type": "extract_field", "field": "id", "apply_to": "key"}], event())
    assert out.key == 7 and out.key_schema.definition == "long"
    [ts] = run([{"type": "extract_field", "field": "source.ts_ms"}], event())
    assert ts.value == COMMIT_MS and ts.value_schema.definition == "long"
    with pytest.raises(ConfigError, match=r"option `field`: `nope` is not a field of `shop.public.customers.Envelope`"):
        run([{"type": "extract_field", "field": "nope"}], event())


def test_hoist_wraps_the_value() -> None:
    [out] = run([{"type": "unwrap"}, {"type": "hoist", "field": "row"}], event())
    assert out.value == {"row": ROW}
    assert out.value_schema.name == "shop.public.customers.Hoisted"
    [key] = run([{"type": "extract_field", "field": "id", "apply_to": "key"},
                 {"type": "hoist", "field": "pk", "apply_to": "key", "record_name": "my.Key"}], event())  # fmt: skip
    assert key.key == {"pk": 7} and key.key_schema.name == "my.Key"


# --- value_to_key -----------------------------------------------------------------------------


def test_value_to_key_reads_the_row_of_an_envelope() -> None:
    [out] = run([{"type": "value_to_key", "fields": ["email", "id"]}], event())
    assert out.key == {"email": "ada@example.com", "id": 7}
    assert out.key_schema.name == "shop.public.customers.Key"
    assert [f["name"] for f in out.key_schema.definition["fields"]] == ["email", "id"]
    [deleted] = run([{"type": "value_to_key", "fields": ["id"]}], event("d"))
    assert deleted.key == {"id": 7}
    [flat] = run([{"type": "unwrap"}, {"type": "value_to_key", "fields": ["name"]}], event())
    assert flat.key == {"name": "Ada"}
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(value_to_key\): option `fields`: `nope` is not a field"):
        run([{"type": "value_to_key", "fields": ["nope"]}], event())


# --- headers ----------------------------------------------------------------------------------


def test_headers_drop_copy_insert() -> None:
    spec = {"type": "headers", "drop": ["source_lsn"], "from_fields": {"tenant": "value.email", "pk": "key.id",
            "missing": "value.nope"}, "insert": {"origin": "eu-1"}}  # fmt: skip
    [out] = run([spec], event())
    assert out.header("source_lsn") is None
    assert out.header("change_id") == CHANGE_ID.encode()
    assert (out.header("tenant"), out.header("pk"), out.header("origin")) == (b"ada@example.com", b"7", b"eu-1")
    assert out.header("missing") is None
    assert out.value == event().value


def test_headers_errors() -> None:
    with pytest.raises(ConfigError, match=r"give at least one of `drop`, `from_fields`, `insert`"):
        run([{"type": "headers"}], event())
    with pytest.raises(ConfigError, match=r"option `from_fields`: unknown name `row.x`"):
        run([{"type": "headers", "from_fields": {"x": "row.x"}}], event())
    with pytest.raises(ConfigError, match=r"option `drop`: the sink deduplicates on the `change_id` header"):
        run([{"type": "headers", "drop": ["change_id"]}], event(), side="sink")


# --- outbox -----------------------------------------------------------------------------------


def _outbox_tables(**names: str) -> object:
    cols = {"id": "id", "aggregatetype": "aggregatetype", "aggregateid": "aggregateid", "type": "type",
            "payload": "payload", **names}  # fmt: skip
    return build_table_schemas(
        table(
            column(cols["id"], "uuid", not_null=True, key_position=1),
            column(cols["aggregatetype"], "text", not_null=True),
            column(cols["aggregateid"], "text", not_null=True),
            column(cols["type"], "text", not_null=True),
            column(cols["payload"], "jsonb"),
            name="outbox",
        ),
        topic="shop.public.outbox",
        topic_prefix="shop",
    )


def _outbox_row(**overrides: object) -> dict[str, object]:
    return {"id": "5c3d7d40-9c1f-4c43-9a3e-0d5c0c1b2a3f", "aggregatetype": "order", "aggregateid": "o-17",
            "type": "OrderCreated", "payload": '{"total": 12}', **overrides}  # fmt: skip


def test_outbox_routes_inserts_by_aggregate_type() -> None:
    tables = _outbox_tables()
    insert = event("c", after=_outbox_row(), tables=tables)  # type: ignore[arg-type]
    update = event("u", before=_outbox_row(), after=_outbox_row(), tables=tables)  # type: ignore[arg-type]
    [out] = run([{"type": "outbox"}], insert, update, event("d", before=_outbox_row(), tables=tables))  # type: ignore[arg-type]
    assert out.topic == "outbox.event.order"
    assert out.key == "o-17" and out.value == '{"total": 12}'
    assert out.header("id") == b"5c3d7d40-9c1f-4c43-9a3e-0d5c0c1b2a3f" and out.header("type") == b"OrderCreated"
    assert out.header("change_id") == CHANGE_ID.encode()
    assert run([{"type": "outbox"}], tombstone(tables, _outbox_row())) == []  # type: ignore[arg-type]


def test_outbox_configurable_columns_and_topic() -> None:
    tables = _outbox_tables(aggregatetype="kind")
    row = _outbox_row()
    row["kind"] = row.pop("aggregatetype")
    spec = {"type": "outbox", "aggregate_type_field": "kind", "topic_format": "events.{aggregatetype}.{type}"}
    [out] = run([spec], event("c", after=row, tables=tables))  # type: ignore[arg-type]
    assert out.topic == "events.order.OrderCreated"
    with pytest.raises(ConfigError, match=r"option `aggregate_type_field`: `shop.public.customers.Value` has no"):
        run([{"type": "outbox"}], event())
    with pytest.raises(ConfigError, match=r"option `topic_format`: unknown placeholder `\{table\}`"):
        run([{"type": "outbox", "topic_format": "x.{table}"}], event())


def test_outbox_with_a_predicate_leaves_other_tables_alone() -> None:
    spec = {"type": "outbox", "predicate": {"type": "table_in", "tables": ["public.outbox"]}}
    record = event()
    assert run([spec], record) == [record]


# --- python -----------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "cdc_user_transforms_for_tests"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        from dataclasses import replace

        def upper_topic(record):
            return replace(record, topic=record.topic.upper())

        def twice(record):
            return [record, record]

        def drop_all(record):
            return None

        def broken(record):
            raise KeyError("boom")

        def wrong(record):
            return 42

        class Tag:
            def __init__(self, suffix="x"):
                self.suffix = suffix

            def apply(self, record):
                return replace(record, value=record.value + self.suffix)

            def derive_schema(self, key_schema, value_schema):
                return key_schema, {"type": "string", "connect.name": "tagged"}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name  # type: ignore[misc]
    sys.modules.pop(name, None)


def test_python_functions(user_module: str) -> None:
    record = event()
    [out] = run([{"type": "python", "callable": f"{user_module}:upper_topic"}], record)
    assert out.topic == "SHOP.PUBLIC.CUSTOMERS"
    assert len(run([{"type": "python", "callable": f"{user_module}:twice"}], record)) == 2
    assert run([{"type": "python", "callable": f"{user_module}:drop_all"}], record) == []
    with pytest.raises(TransformError, match=r"transforms\[0\] \(python\): KeyError"):
        run([{"type": "python", "callable": f"{user_module}:broken"}], record)
    with pytest.raises(TransformError, match=r"returned int, not a Record"):
        run([{"type": "python", "callable": f"{user_module}:wrong"}], record)


def test_python_class_with_options_and_derived_schema(user_module: str) -> None:
    from core.records import AvroSchema

    record = Record("t", None, "v", None, AvroSchema.of("string"))
    spec = {"type": "python", "callable": f"{user_module}:Tag", "options": {"suffix": "!"}}
    [out] = run([spec], record)
    assert out.value == "v!"
    assert out.value_schema == AvroSchema.of({"type": "string", "connect.name": "tagged"})


def test_python_import_errors_name_the_path(user_module: str) -> None:
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(python\): option `callable`: cannot import `no_such_mod"):
        run([{"type": "python", "callable": "no_such_mod_xyz:f"}], event())
    with pytest.raises(ConfigError, match=rf"`{user_module}:nothing`: `{user_module}` has no attribute `nothing`"):
        run([{"type": "python", "callable": f"{user_module}:nothing"}], event())
    with pytest.raises(ConfigError, match=r"option `callable`: String should match pattern"):
        run([{"type": "python", "callable": "not a path"}], event())
    with pytest.raises(ConfigError, match=r"option `options`: `.*:Tag` refused its options"):
        run([{"type": "python", "callable": f"{user_module}:Tag", "options": {"colour": 1}}], event())
    with pytest.raises(ConfigError, match=r"option `options`: `options` are passed to a class's constructor"):
        run([{"type": "python", "callable": f"{user_module}:twice", "options": {"a": 1}}], event())


def test_customers_fixture_is_realistic() -> None:
    # Guards the helper itself: the envelope defines Value once and names it in `after`.
    schema = customers().value_schema.definition
    after = next(f for f in schema["fields"] if f["name"] == "after")
    assert after["type"] == ["null", "shop.public.customers.Value"]
