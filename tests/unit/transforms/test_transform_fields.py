"""Field-level transforms on envelopes (rows in before/after), flat rows and keys: records and schemas."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from core.errors import ConfigError
from tests.unit.transforms.transforms_support import ROW, event, field_type, row_fields, run, tombstone
from transforms.exceptions import TransformError

pytestmark = pytest.mark.unit

UNWRAP = {"type": "unwrap"}


# --- mask ---------------------------------------------------------------------------------------


def test_mask_fixed_masks_both_rows_with_the_types_empty_value() -> None:
    [out] = run([{"type": "mask", "fields": ["email", "amount", "active", "missing_column"]}], event("u", before=ROW))
    for row in (out.value["before"], out.value["after"]):
        assert row["email"] == ""
        assert row["amount"] == Decimal(0)
        assert row["active"] is False
        assert row["name"] == "Ada"
    assert out.value["op"] == "u"
    assert out.value_schema == event().value_schema  # fixed masking keeps the schema
    assert out.key == {"id": 7}


def test_mask_fixed_replacement_must_fit_the_field_type() -> None:
    [out] = run([{"type": "mask", "fields": ["email"], "replacement": "***"}], event())
    assert out.value["after"]["email"] == "***"
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(mask\): option `replacement`: 'x' does not fit field"):
        run([{"type": "mask", "fields": ["id"], "replacement": "x"}], event())


def test_mask_null_only_for_nullable_fields() -> None:
    [out] = run([{"type": "mask", "fields": ["name"], "mode": "null"}, UNWRAP], event())
    assert out.value["name"] is None
    with pytest.raises(ConfigError, match=r"option `mode`: field `id` .* is not nullable"):
        run([{"type": "mask", "fields": ["id"], "mode": "null"}], event())


def test_mask_hash_is_salted_sha256_and_retypes_the_field_as_string() -> None:
    [out] = run(
        [{"type": "mask", "fields": ["email", "id"], "mode": "hash", "salt": "pepper"}, UNWRAP], event()
    )
    assert out.value["email"] == hashlib.sha256(b"pepper" + b"ada@example.com").hexdigest()
    assert out.value["id"] == hashlib.sha256(b"pepper7").hexdigest()
    assert field_type(out.value_schema, "id") == "string"
    assert field_type(out.value_schema, "email") == ["null", "string"]
    id_field = next(f for f in out.value_schema.definition["fields"] if f["name"] == "id")
    assert "pg.type" not in id_field  # the column is no longer int8


def test_mask_key_with_apply_to_both() -> None:
    [out] = run([{"type": "mask", "fields": ["id"], "mode": "hash", "salt": "s", "apply_to": "both"}], event())
    assert out.key == {"id": hashlib.sha256(b"s7").hexdigest()}
    assert out.value["after"]["id"] == out.key["id"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fields": []}, r"option `fields`: List should have at least 1 item"),
        ({"fields": ["a"], "mode": "hash"}, r"mode `hash` needs a `salt`"),
        ({"fields": ["a"], "mode": "null", "replacement": 1}, r"`replacement` is only used with mode `fixed`"),
        ({"fields": ["bad name"]}, r"option `fields.0`: String should match pattern"),
        ({"fields": ["a"], "colour": "red"}, r"option `colour`: Extra inputs are not permitted"),
    ],
)
def test_mask_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"transforms\[1\] \(mask\): " + message):
        run([UNWRAP, {"type": "mask", **options}], event())


# --- drop / keep / rename ---------------------------------------------------------------------


def test_drop_removes_fields_from_rows_schema_and_unchanged_toast() -> None:
    record = event("u", before=ROW)
    record = record.__class__(**{**{s: getattr(record, s) for s in record.__slots__},
                                 "value": {**record.value, "unchanged_toast": ["name", "email"]}})  # fmt: skip
    [out] = run([{"type": "drop", "fields": ["email", "amount"]}], record)
    assert row_fields(out.value_schema) == ["id", "name", "created_at", "active"]
    assert "email" not in out.value["after"] and "email" not in out.value["before"]
    assert out.value["unchanged_toast"] == ["name"]


def test_keep_keeps_listed_fields_in_schema_order() -> None:
    [out] = run([UNWRAP, {"type": "keep", "fields": ["name", "id"]}], event())
    assert row_fields(out.value_schema) == ["id", "name"]
    assert out.value == {"id": 7, "name": "Ada"}


def test_rename_renames_rows_and_key_by_default() -> None:
    [out] = run([{"type": "rename", "renames": {"id": "customer_id", "name": "full_name"}}], event("u", before=ROW))
    assert row_fields(out.value_schema)[:3] == ["customer_id", "email", "full_name"]
    assert out.value["after"]["customer_id"] == 7 and "id" not in out.value["before"]
    assert out.key == {"customer_id": 7}
    assert [f["name"] for f in out.key_schema.definition["fields"]] == ["customer_id"]


def test_rename_value_only_and_collisions() -> None:
    [out] = run([{"type": "rename", "renames": {"id": "customer_id"}, "apply_to": "value"}], event())
    assert out.key == {"id": 7}
    with pytest.raises(ConfigError, match=r"option `renames`: `name` -> `email`: .* already has a field `email`"):
        run([{"type": "rename", "renames": {"name": "email"}}], event())
    with pytest.raises(ConfigError, match=r"several fields renamed to `x`"):
        run([{"type": "rename", "renames": {"a": "x", "b": "x"}}], event())
    # swapping two names is fine
    [swapped] = run([UNWRAP, {"type": "rename", "renames": {"name": "email", "email": "name"}}], event())
    assert swapped.value["email"] == "Ada" and swapped.value["name"] == "ada@example.com"


# --- insert -----------------------------------------------------------------------------------


def test_insert_static_and_record_fields_on_the_sink_side() -> None:
    record = event()
    sink_record = record.__class__(**{**{s: getattr(record, s) for s in record.__slots__},
                                      "partition": 3, "offset": 99, "timestamp_ms": 1_700_000_000_000})  # fmt: skip
    spec = {"type": "insert", "static_field": "region", "static_value": "eu", "topic_field": "kafka_topic",
            "partition_field": "kafka_partition", "offset_field": "kafka_offset",
            "timestamp_field": "kafka_ts"}  # fmt: skip
    [out] = run([spec], sink_record, side="sink")
    after = out.value["after"]
    got = [after[n] for n in ("region", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_ts")]
    assert got == ["eu", "shop.public.customers", 3, 99, 1_700_000_000_000]
    assert field_type(out.value_schema, "region") == "string"
    assert field_type(out.value_schema, "kafka_ts") == ["null", {"type": "long", "logicalType": "timestamp-millis"}]
    [source_side] = run([spec], record)
    assert source_side.value["after"]["kafka_offset"] is None


def test_insert_typed_static_values_and_errors() -> None:
    [out] = run([UNWRAP, {"type": "insert", "static_field": "version", "static_value": 3}], event())
    assert out.value["version"] == 3 and field_type(out.value_schema, "version") == "long"
    with pytest.raises(ConfigError, match=r"option `topic_field`: .* already has a field `email`"):
        run([{"type": "insert", "topic_field": "email"}], event())
    with pytest.raises(ConfigError, match=r"`static_field` and `static_value` go together"):
        run([{"type": "insert", "static_field": "x"}], event())
    with pytest.raises(ConfigError, match=r"give at least one of"):
        run([{"type": "insert"}], event())


# --- cast -------------------------------------------------------------------------------------


def test_cast_changes_types_and_values() -> None:
    spec = {"type": "cast", "spec": {"id": "string", "amount": "float64", "active": "int8", "name": "boolean"}}
    [out] = run([spec, UNWRAP], event(after={**ROW, "name": "true"}))
    assert out.value["id"] == "7"
    assert out.value["amount"] == 12.5
    assert out.value["active"] == 1
    assert out.value["name"] is True
    assert field_type(out.value_schema, "id") == "string"
    assert field_type(out.value_schema, "amount") == ["null", "double"]
    assert field_type(out.value_schema, "active") == ["null", "int"]


def test_cast_failures() -> None:
    with pytest.raises(TransformError, match=r"cannot cast field `email` value of type str to int32"):
        run([{"type": "cast", "spec": {"email": "int32"}}], event())
    with pytest.raises(TransformError, match=r"out of range -128..127"):
        run([{"type": "cast", "spec": {"id": "int8"}}], event(after={**ROW, "id": 300}))
    with pytest.raises(ConfigError, match=r"option `spec.id`: Input should be 'int8'"):
        run([{"type": "cast", "spec": {"id": "int128"}}], event())


def test_cast_to_string_of_timestamp_field_but_not_to_number() -> None:
    [out] = run([{"type": "cast", "spec": {"created_at": "string"}}, UNWRAP], event())
    assert out.value["created_at"] == "1704164645123456"
    with pytest.raises(ConfigError, match=r"option `spec`: field `created_at` of type timestamp-micros cannot be cast"):
        run([{"type": "cast", "spec": {"created_at": "int64"}}], event())


# --- timestamp_convert ------------------------------------------------------------------------


def test_timestamp_convert_to_string_unix_and_date() -> None:
    to_string = {"type": "timestamp_convert", "fields": ["created_at"], "target_type": "string",
                 "format": "yyyy-MM-dd'T'HH:mm:ss.SSS"}  # fmt: skip
    [out] = run([to_string, UNWRAP], event())
    assert out.value["created_at"] == "2024-01-02T03:04:05.123"
    assert field_type(out.value_schema, "created_at") == ["null", "string"]

    [ms] = run([{"type": "timestamp_convert", "fields": ["created_at"], "target_type": "unix_ms"}, UNWRAP], event())
    assert ms.value["created_at"] == 1_704_164_645_123
    [day] = run([{"type": "timestamp_convert", "fields": ["created_at"], "target_type": "date"}, UNWRAP], event())
    assert day.value["created_at"] == date(2024, 1, 2)
    assert field_type(day.value_schema, "created_at") == ["null", {"type": "int", "logicalType": "date"}]


FORMAT = "yyyy-MM-dd HH:mm:ss"


def test_timestamp_convert_string_back_to_timestamp() -> None:
    specs = [
        UNWRAP,
        {"type": "timestamp_convert", "fields": ["created_at"], "target_type": "string", "format": FORMAT},
        {"type": "timestamp_convert", "fields": ["created_at"], "target_type": "timestamp_ms", "format": FORMAT},
    ]  # fmt: skip
    [out] = run(specs, event())
    assert out.value["created_at"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert field_type(out.value_schema, "created_at") == ["null", {"type": "long", "logicalType": "timestamp-millis"}]


def test_timestamp_convert_plain_long_and_errors() -> None:
    [out] = run([UNWRAP, {"type": "timestamp_convert", "fields": ["id"], "target_type": "timestamp_micros",
                          "unix_precision": "microseconds"}], event())  # fmt: skip
    assert out.value["id"] == datetime(1970, 1, 1, 0, 0, 0, 7, tzinfo=UTC)
    with pytest.raises(ConfigError, match=r"option `format`: string field `email` needs a `format`"):
        run([{"type": "timestamp_convert", "fields": ["email"], "target_type": "unix_ms"}], event())
    with pytest.raises(ConfigError, match=r"option `fields`: field `active` of type boolean is not a timestamp"):
        run([{"type": "timestamp_convert", "fields": ["active"], "target_type": "unix_ms"}], event())
    with pytest.raises(ConfigError, match=r"target_type `string` needs a `format`"):
        run([{"type": "timestamp_convert", "fields": ["created_at"], "target_type": "string"}], event())
    with pytest.raises(ConfigError, match=r"option `format`: unsupported date pattern letters `QQ`"):
        run([{"type": "timestamp_convert", "fields": ["a"], "target_type": "string", "format": "yyyy-QQ"}], event())
    with pytest.raises(TransformError, match=r"does not match format `yyyy`"):
        run([{"type": "timestamp_convert", "fields": ["email"], "target_type": "unix_ms", "format": "yyyy"}], event())


# --- flatten ----------------------------------------------------------------------------------


def test_flatten_nested_records_with_nullable_parents() -> None:
    from core.records import AvroSchema, Record

    schema = AvroSchema.of({
        "type": "record", "name": "Order", "namespace": "shop",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "address", "type": ["null", {"type": "record", "name": "Address", "fields": [
                {"name": "city", "type": "string"},
                {"name": "geo", "type": {"type": "record", "name": "Geo",
                                         "fields": [{"name": "lat", "type": "double"}]}},
            ]}], "default": None},
            {"name": "billing", "type": "Address"},
        ],
    })  # fmt: skip
    address = {"city": "Paris", "geo": {"lat": 48.8}}
    records = [Record("orders", None, {"id": 1, "address": address, "billing": address}, None, schema),
               Record("orders", None, {"id": 2, "address": None, "billing": address}, None, schema)]  # fmt: skip
    first, second = run([{"type": "flatten"}], *records)
    assert first.value == {"id": 1, "address_city": "Paris", "address_geo_lat": 48.8, "billing_city": "Paris",
                           "billing_geo_lat": 48.8}  # fmt: skip
    assert second.value["address_city"] is None
    assert field_type(second.value_schema, "address_city") == ["null", "string"]
    assert field_type(second.value_schema, "billing_city") == "string"
    with pytest.raises(ConfigError, match=r"option `delimiter`: String should match pattern"):
        run([{"type": "flatten", "delimiter": "."}], *records)


def test_flatten_leaves_flat_rows_alone_and_tombstones_pass() -> None:
    record = event()
    [out] = run([{"type": "flatten"}], record)
    assert out is record
    [dead] = run([{"type": "mask", "fields": ["email"]}], tombstone())
    assert dead.value is None


def test_dropping_the_field_that_defines_a_named_type_keeps_the_schema_valid() -> None:
    from core.records import AvroSchema, Record

    status = {"type": "enum", "name": "Status", "symbols": ["NEW", "DONE"]}
    schema = AvroSchema.of({
        "type": "record", "name": "Task", "namespace": "app",
        "fields": [{"name": "id", "type": "long"}, {"name": "first", "type": status},
                   {"name": "last", "type": "Status"}],
    })  # fmt: skip
    record = Record("tasks", None, {"id": 1, "first": "NEW", "last": "DONE"}, None, schema)
    [out] = run([{"type": "drop", "fields": ["first"]}], record)
    assert out.value == {"id": 1, "last": "DONE"}
    assert field_type(out.value_schema, "last") == {"type": "enum", "name": "app.Status", "symbols": ["NEW", "DONE"]}
    [masked] = run([{"type": "mask", "fields": ["last"]}], record)
    assert masked.value["last"] == "NEW"  # an enum's first symbol


def test_converting_transforms_see_unchanged_toast_columns_as_null() -> None:
    record = event("u", before={**dict.fromkeys(ROW), "id": 7}, after={**ROW, "name": "__cdc_unavailable_value"})
    record = replace(record, value={**record.value, "unchanged_toast": ["name"]})
    [out] = run([{"type": "cast", "spec": {"name": "int32"}}], record)
    assert out.value["after"]["name"] is None and out.value["unchanged_toast"] == ["name"]
    with pytest.raises(TransformError, match="cannot cast field `name`"):
        sent = replace(record, value={**record.value, "unchanged_toast": []})
        run([{"type": "cast", "spec": {"name": "int32"}}], sent)
    [masked] = run([{"type": "mask", "fields": ["name"], "mode": "hash", "salt": "s"}], record)
    assert masked.value["after"]["name"] == hashlib.sha256(b"s__cdc_unavailable_value").hexdigest()  # sinks skip it
