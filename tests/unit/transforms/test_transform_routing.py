"""route, route_by_field, timestamp_router, filter (and its condition language), predicates."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import pytest

from core.errors import ConfigError
from tests.unit.transforms.transforms_support import CHANGE_ID, ROW, event, run, tombstone
from transforms.exceptions import TransformError
from transforms.expression import ExpressionError, compile_condition, tokenize

pytestmark = pytest.mark.unit


# --- route ------------------------------------------------------------------------------------


def test_route_rewrites_whole_matches_with_groups() -> None:
    spec = {"type": "route", "regex": r"(?P<prefix>[^.]+)\.public\.(.*)", "replacement": "${prefix}-$2-$$"}
    [out] = run([spec], event())
    assert out.topic == "shop-customers-$"
    assert out.value == event().value and out.value_schema == event().value_schema
    unmatched = replace(event(), topic="other")
    assert run([spec], unmatched) == [unmatched]
    # a partial match is not a match (Kafka Connect uses Matcher.matches)
    assert run([{"type": "route", "regex": "shop", "replacement": "x"}], event())[0].topic == "shop.public.customers"


def test_route_bad_options() -> None:
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(route\): option `regex`: not a valid regular expression"):
        run([{"type": "route", "regex": "(", "replacement": "x"}], event())
    with pytest.raises(ConfigError, match=r"`replacement` refers to group \$2 but `regex` has 1"):
        run([{"type": "route", "regex": "(a)", "replacement": "$2"}], event())
    with pytest.raises(ConfigError, match=r"option `replacement`: Field required"):
        run([{"type": "route", "regex": "a"}], event())


# --- route_by_field ---------------------------------------------------------------------------


def test_route_by_field_uses_the_row_value() -> None:
    [out] = run([{"type": "route_by_field", "field": "value.name", "format": "{topic}.{value}"}], event())
    assert out.topic == "shop.public.customers.Ada"
    [sanitized] = run([{"type": "route_by_field", "field": "value.email", "format": "by-email.{value}"}], event())
    assert sanitized.topic == "by-email.ada_example.com"
    [deleted] = run([{"type": "route_by_field", "field": "key.id", "format": "k{value}"}], event("d"))
    assert deleted.topic == "k7"


def test_route_by_field_missing_values() -> None:
    record = event(after={**ROW, "name": None})
    assert run([{"type": "route_by_field", "field": "value.name"}], record) == [record]
    assert run([{"type": "route_by_field", "field": "value.name", "on_missing": "drop"}], record) == []
    with pytest.raises(TransformError, match=r"transforms\[0\] \(route_by_field\): `value.name` is null"):
        run([{"type": "route_by_field", "field": "value.name", "on_missing": "fail"}], record)
    with pytest.raises(ConfigError, match=r"option `format`: unknown placeholder `\{table\}`"):
        run([{"type": "route_by_field", "field": "value.name", "format": "{table}"}], record)
    with pytest.raises(ConfigError, match=r"option `field`: unknown name `name`"):
        run([{"type": "route_by_field", "field": "name"}], record)


# --- timestamp_router -------------------------------------------------------------------------


def test_timestamp_router_uses_the_commit_time() -> None:
    [out] = run([{"type": "timestamp_router"}], event())
    assert out.topic == "shop.public.customers-20240102"
    [hourly] = run([{"type": "timestamp_router", "format": "{topic}.{yyyy}.{MM}.{dd-HH}h"}], event())
    assert hourly.topic == "shop.public.customers.2024.01.02-03h"


def test_timestamp_router_falls_back_to_the_record_timestamp() -> None:
    [flat] = run([{"type": "unwrap"}], event())
    assert run([{"type": "timestamp_router"}], flat) == [flat]  # no time known: unchanged
    stamped = replace(flat, timestamp_ms=0)
    assert run([{"type": "timestamp_router", "format": "t-{yyyy-MM-dd}"}], stamped)[0].topic == "t-1970-01-01"
    with pytest.raises(ConfigError, match=r"option `format`: unsupported date pattern letters `QQQ`"):
        run([{"type": "timestamp_router", "format": "{topic}-{QQQ}"}], flat)


# --- filter -----------------------------------------------------------------------------------


def test_filter_keeps_or_drops_by_condition() -> None:
    create, update, delete = event("c"), event("u", before=ROW), event("d")
    kept = run([{"type": "filter", "condition": "op in ['c', 'u'] and value.amount >= 10"}], create, update, delete)
    assert [r.value["op"] for r in kept] == ["c", "u"]
    dropped = run([{"type": "filter", "condition": "op == 'd'", "action": "drop"}], create, delete)
    assert [r.value["op"] for r in dropped] == ["c"]


def test_filter_without_condition_drops_what_the_predicate_selects() -> None:
    spec = {"type": "filter", "predicate": {"type": "is_tombstone"}}
    create, dead = event(), tombstone()
    assert run([spec], create, dead) == [create]
    negated = {**spec, "negate": True}
    assert run([negated], create, dead) == [dead]


def test_filter_bad_condition_names_the_column() -> None:
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(filter\): option `condition`: expected `\)` but found"):
        run([{"type": "filter", "condition": "(op == 'c'"}], event())
    with pytest.raises(ConfigError, match=r"option `condition`: unexpected character `;` at column 9"):
        run([{"type": "filter", "condition": "op == 1 ; drop"}], event())


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("op == 'c'", True),
        ("op != 'c'", False),
        ("topic == \"shop.public.customers\"", True),
        ("schema == 'public' and table == 'customers'", True),
        ("key.id == 7 and value.id == 7 and after.id == 7", True),
        ("before.id == null", True),
        ("source.txId > 41 and source.lsn <= 1000", True),
        ("value.amount > 12.4 and value.amount < 12.6", True),
        ("value.active == true and not value.active == false", True),
        ("value.name in ['Ada', 'Bob'] and value.name not in ['Eve']", True),
        ("'example' in value.email", True),
        ("value.missing == null and value.missing != 1", True),
        ("value.name > 3", False),  # different types compare false, never raise
        ("headers.change_id == '0b4f7c39-5d5e-5a8e-9a49-4f3c2e1d0a11'", True),
        ("headers.nope == null", True),
        ("not (op == 'd' or op == 'u') and (value.id == 7)", True),
        ("op == 'c' and false or true", True),
        ("value.active", True),
        ("value == null", False),
        ("partition == null and offset == null and timestamp == null", True),
        ("value.id == -7", False),
        ("value.id >= 7.0", True),
        ("'it\\'s' == \"it's\"", True),
        ("[] == []", True),
    ],
)
def test_condition_language(condition: str, expected: bool) -> None:
    assert compile_condition(condition)(event()) is expected


def test_condition_compares_decoded_uuids_as_text() -> None:
    record = event()
    decoded = replace(record, value={**record.value, "after": {**ROW, "name": UUID(CHANGE_ID)}})
    assert compile_condition(f"value.name == '{CHANGE_ID}'")(decoded)


def test_condition_on_flat_rows_after_unwrap() -> None:
    [flat] = run([{"type": "unwrap"}], event())
    assert compile_condition("value.id == 7 and after.id == 7 and before.id == null and op == null")(flat)
    assert compile_condition("schema == 'public' and table == 'customers'")(flat)  # from the topic


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("", "empty condition"),
        ("op ==", "expected a value or a name but found the end"),
        ("op == 'c' 'd'", "unexpected `'d'` at column 11"),
        ("foo == 1", "unknown name `foo`"),
        ("op.x == 1", "`op` has no fields"),
        ("key == 1", "write `key.<field>`"),
        ("headers == 1", "write `headers.<name>`"),
        ("[1, 2", "expected `]` but found the end"),
        ("op = 'c'", "unexpected character `=`"),
        ("__import__('os')", "unknown name `__import__`"),
    ],
)
def test_condition_errors(condition: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace("[", r"\[")):
        compile_condition(condition)


def test_tokenizer_literals() -> None:
    kinds = [(t.kind, t.value) for t in tokenize("1 2.5 -3 'a\\nb' true")]
    assert kinds == [
        ("number", 1), ("number", 2.5), ("number", -3), ("string", "a\nb"), ("keyword", None), ("end", None),
    ]  # fmt: skip


# --- predicates -------------------------------------------------------------------------------


MARK = {"type": "headers", "insert": {"hit": "1"}}


def _hits(predicate: dict[str, object], *records: object, negate: bool = False) -> list[bool]:
    spec = {**MARK, "predicate": predicate, **({"negate": True} if negate else {})}
    return [r.header("hit") == b"1" for r in run([spec], *records)]  # type: ignore[arg-type]


def test_predicate_topic_matches() -> None:
    other = replace(event(), topic="shop.audit.log")
    public = {"type": "topic_matches", "pattern": r"shop\.public\..*"}
    assert _hits(public, event(), other) == [True, False]
    assert _hits(public, event(), other, negate=True) == [False, True]
    with pytest.raises(ConfigError, match=r"option `predicate.pattern`: not a valid regular expression"):
        _hits({"type": "topic_matches", "pattern": "("}, event())


def test_predicate_table_in_op_in_has_header_is_tombstone() -> None:
    create, delete, dead = event("c"), event("d"), tombstone()
    assert _hits({"type": "table_in", "tables": ["public.customers"]}, create, dead) == [True, True]
    assert _hits({"type": "table_in", "tables": ["public.orders"]}, create) == [False]
    assert _hits({"type": "op_in", "ops": ["d"]}, create, delete, dead) == [False, True, False]
    assert _hits({"type": "has_header", "name": "source_lsn"}, create, dead) == [True, False]
    assert _hits({"type": "is_tombstone"}, create, dead) == [False, True]


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ({"type": "table_in", "tables": ["customers"]}, r"option `predicate.tables.0`: String should match pattern"),
        ({"type": "op_in", "ops": ["x"]}, r"option `predicate.ops.0`: Input should be 'c', 'u', 'd', 'r' or 't'"),
        ({"type": "has_header"}, r"option `predicate.name`: Field required"),
        ({"type": "is_tombstone", "x": 1}, r"option `predicate.x`: Extra inputs are not permitted"),
        ({"type": "sometimes"}, r"option `predicate`: Input tag 'sometimes' found using 'type' does not match"),
    ],
)
def test_predicate_bad_options(predicate: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(headers\): " + message):
        _hits(predicate, event())


def test_negate_needs_a_predicate() -> None:
    with pytest.raises(ConfigError, match=r"`negate` needs a `predicate`"):
        run([{**MARK, "negate": True}], event())
