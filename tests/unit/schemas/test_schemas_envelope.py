"""Key/value schemas of a table, rows with unchanged TOAST, and full envelopes through fastavro."""

from __future__ import annotations

import io
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from core.errors import SchemaError
from schemas.envelope import UNCHANGED_TOAST, build_table_schemas, record_namespace, source_block
from schemas.serde import without_raw_logical_types
from schemas.types import UNAVAILABLE_VALUE, DecimalHandling
from tests.unit.schemas.schemas_support import array_of, column, numeric_typmod, pg_type, table

pytestmark = pytest.mark.unit


def orders() -> Any:
    return table(
        column("id", "int8", not_null=True, key_position=1),
        column("region", "text", not_null=True, key_position=2, toastable=True),
        column("amount", "numeric", typmod=numeric_typmod(10, 2), toastable=True),
        column("total", "numeric", toastable=True),
        column("note", "text", toastable=True),
        column("tags", array_of(pg_type("text")), toastable=True),
        column("at", "timestamptz", not_null=True),
        column("created", "date"),
        column("Weird Name", "int4"),
        column("gen", "int4", generated=True),
        schema="shop",
        name="orders",
    )


def roundtrip(schema: dict[str, Any], value: Any) -> Any:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), value)
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, fastavro.parse_schema(without_raw_logical_types(schema)), None)


def test_schemas_of_a_table() -> None:
    schemas = build_table_schemas(orders(), topic="app.shop.orders", topic_prefix="app")
    assert schemas.key_columns == ("id", "region")
    assert schemas.column_names == ("id", "region", "amount", "total", "note", "tags", "at", "created", "Weird Name")
    key = schemas.key_schema
    assert key is not None
    assert key.name == "app.shop.orders.Key"
    assert [f["name"] for f in key.definition["fields"]] == ["id", "region"]
    assert key.definition["fields"][0]["type"] == "long"
    value = schemas.value_schema.definition
    assert schemas.value_schema.name == "app.shop.orders.Envelope"
    fields = {f["name"]: f for f in value["fields"]}
    assert list(fields) == ["before", "after", "source", "op", "ts_ms", "change_id", "unchanged_toast"]
    row_record = fields["before"]["type"][1]
    assert row_record["name"] == "Value" and row_record["namespace"] == "app.shop.orders"
    assert fields["after"]["type"] == ["null", "app.shop.orders.Value"]
    assert fields["source"]["type"]["connect.name"] == "io.debezium.connector.postgresql.Source"
    columns = {f["name"]: f for f in row_record["fields"]}
    assert columns["Weird_Name"]["pg.name"] == "Weird Name"
    assert "gen" not in columns
    assert all("pg.type" in f for f in row_record["fields"])
    fastavro.parse_schema(value)
    fastavro.parse_schema(key.definition)


def test_full_envelope_round_trip_with_unchanged_toast() -> None:
    schemas = build_table_schemas(orders(), topic="app.shop.orders", topic_prefix="app")
    texts = ["7", "eu", "12.50", "3.14159", "hello", '{a,"b c"}', "2024-01-02 03:04:05+00", "2024-02-29", "5"]
    after, unchanged = schemas.row(texts)
    assert unchanged == ()
    assert after["amount"] == Decimal("12.50")
    before, _ = schemas.row(["7", "eu", None, None, None, None, None, None, None])  # key-only old tuple
    partial = ["7", "eu", "13.00", "NaN", UNCHANGED_TOAST, UNCHANGED_TOAST, "2024-01-02 03:04:05+00", None, None]
    updated, unchanged = schemas.row(partial)
    assert unchanged == ("note", "tags")
    assert updated["note"] == UNAVAILABLE_VALUE
    assert updated["tags"] is None
    assert updated["total"] == "NaN"
    assert schemas.key(updated) == {"id": 7, "region": "eu"}
    change_id = str(uuid.uuid4())
    source = source_block(name="c1", db="app", schema="shop", table="orders", ts_ms=1700000000000, tx_id=42,
                          lsn=200, commit_lsn=300)  # fmt: skip
    assert source["sequence"] == '["300","200"]'
    for op, b, a, u in [("c", None, after, ()), ("u", before, updated, unchanged), ("d", before, None, ())]:
        event = schemas.envelope(op=op, before=b, after=a, source=source, ts_ms=1700000000001,
                                 change_id=change_id, unchanged_toast=u)  # fmt: skip
        decoded = roundtrip(schemas.value_schema.definition, event)
        assert decoded == {**event, "unchanged_toast": list(u)}
    key = schemas.key(after)
    assert roundtrip(schemas.key_schema.definition, key) == key  # type: ignore[union-attr]


def test_two_variable_scale_decimals_define_the_record_once() -> None:
    t = table(column("a", "numeric", toastable=True), column("b", "numeric", toastable=True))
    schemas = build_table_schemas(t, topic="p.public.t", topic_prefix="p")
    row_fields = schemas.value_schema.definition["fields"][0]["type"][1]["fields"]
    assert isinstance(row_fields[0]["type"][1], dict)
    assert row_fields[1]["type"][1] == "io.debezium.data.VariableScaleDecimal"
    row, _ = schemas.row(["1.5", "-2"])
    event = schemas.envelope(op="r", before=None, after=row, source=source_block(name="n", db="d", schema="public",
                             table="t", ts_ms=0, snapshot="true"), ts_ms=None, change_id=str(uuid.uuid4()))  # fmt: skip
    assert roundtrip(schemas.value_schema.definition, event)["after"] == row


def test_keyless_table_has_no_key_schema() -> None:
    t = table(column("a", "int4"), column("b", "text"), replica_identity="f")
    schemas = build_table_schemas(t, topic="p.public.t", topic_prefix="p")
    assert schemas.key_schema is None
    assert schemas.key({"a": 1, "b": "x"}) is None
    configured = build_table_schemas(t, topic="p.public.t", topic_prefix="p", key_columns=["b"])
    assert configured.key_schema is not None
    assert configured.key({"a": 1, "b": "x"}) == {"b": "x"}


def test_column_selection_and_unsupported_columns() -> None:
    t = table(column("id", "int4", not_null=True, key_position=1), column("secret", "text"),
              column("shape", pg_type("geometry", schema="public")))  # fmt: skip
    with pytest.raises(SchemaError, match=r"cannot map column public\.t\.shape"):
        build_table_schemas(t, topic="p.public.t", topic_prefix="p")
    schemas = build_table_schemas(t, topic="p.public.t", topic_prefix="p", skip_unsupported=True,
                                  columns_exclude=["secret"])  # fmt: skip
    assert schemas.column_names == ("id",)
    only = build_table_schemas(t, topic="p.public.t", topic_prefix="p", columns_include=["id", "secret"])
    assert only.column_names == ("id", "secret")
    with pytest.raises(SchemaError, match="key column id is in `columns_exclude`"):
        build_table_schemas(t, topic="p.public.t", topic_prefix="p", columns_exclude=["id"], skip_unsupported=True)
    with pytest.raises(SchemaError, match="does not have: nope"):
        build_table_schemas(t, topic="p.public.t", topic_prefix="p", columns_exclude=["nope"])


def test_decimal_handling_changes_value_types() -> None:
    t = table(column("id", "int4", not_null=True, key_position=1), column("n", "numeric", toastable=True))
    as_string = build_table_schemas(t, topic="p.public.t", topic_prefix="p", decimal_handling=DecimalHandling.STRING)
    assert as_string.row(["1", "1.50"])[0] == {"id": 1, "n": "1.50"}


def test_bad_values_name_the_column_not_the_value() -> None:
    t = table(column("id", "int4", not_null=True, key_position=1), column("n", "int4"))
    schemas = build_table_schemas(t, topic="p.public.t", topic_prefix="p")
    with pytest.raises(SchemaError) as caught:
        schemas.row(["1", "secret-value"])
    assert "public.t.n" in caught.value.message
    assert "secret-value" not in str(caught.value)
    with pytest.raises(SchemaError, match="got 1 values for 2 captured columns"):
        schemas.row(["1"])


def test_names_are_made_valid_avro_names() -> None:
    assert record_namespace("my-app.prod", "Sales Data", "2024_orders") == "my_app.prod.Sales_Data._2024_orders"
    t = table(column("a b", "int4"), column("a_b", "int4"), column("a-b", "int4"))
    schemas = build_table_schemas(t, topic="p.public.t", topic_prefix="p")
    assert schemas.field_names == ("a_b_2", "a_b", "a_b_3")
    fastavro.parse_schema(schemas.value_schema.definition)
