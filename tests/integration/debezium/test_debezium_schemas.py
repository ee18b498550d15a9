"""Debezium's PostgreSQL connector and ours capture the same table; what they register and send is the same
(issue 12, proof 1).

The table has a column of every type of tests/support/debezium_schemas.py (every type docs/types.md maps, those
Debezium does not capture among them), a composite key, NOT NULL columns with defaults, and rows of ordinary and
special values (NaN, infinities, `24:00:00`, a timetz west of UTC). Debezium (defaults: adaptive time precision,
precise decimals, bytes as bytes, Avro name adjustment) and our source (`schema_style: debezium`) both take a
snapshot, then stream an insert, an update and a delete. Then:

- the key and value schemas registered for the two topics are equal field by field, but for `OUR_EXTRAS` (listed in
  tests/support/debezium_schemas.py and docs/event-format.md) and the documented `ours_field` differences;
- every record decodes to the same key, `op`, `before` and `after`, but for the documented value differences, and the
  `source` blocks agree on every field but `SOURCE_VALUE_DIFFERENCES`; a tombstone follows the delete in both.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from devstack.connect import drop_slot_and_publication, postgres_source_settings
from schemas.registry import SchemaRegistry, SchemaRegistryConfig
from schemas.serde import Decoder
from tests.integration.debezium.conftest import StartWorker
from tests.integration.pipeline_support import drop_replication_state, free_port, stop_connector, wait_until
from tests.support import debezium_schemas as dbz
from tests.support.helpers import consume_all, http_get, pg_connect, scratch_schema
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 7
"""3 snapshot reads, a create, an update, a delete and its tombstone."""


def _type(spec: dbz.DebeziumField, schema: str) -> sql.Composable:
    if spec.typname in (dbz.ENUM, dbz.DOMAIN):
        name = "mood" if spec.typname == dbz.ENUM else "dnum"
        return sql.SQL("{}{}").format(sql.Identifier(schema, name), sql.SQL("[]" if spec.array else ""))
    return sql.SQL(spec.ddl)  # type: ignore[arg-type]  # the support table's own type texts


def _ddl(schema: str) -> sql.Composable:
    columns = []
    for spec in dbz.COLUMNS:
        parts = [sql.Identifier(spec.name), _type(spec, schema)]
        if spec.not_null:
            parts.append(sql.SQL("NOT NULL"))
        if spec.default is not None:
            parts.append(sql.SQL("DEFAULT {}").format(sql.Literal(spec.default)))
        columns.append(sql.SQL(" ").join(parts))
    key = sql.SQL(", ").join(sql.Identifier(k) for k in dbz.KEY)
    return sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
        sql.Identifier(schema, "items"), sql.SQL(", ").join(columns), key
    )


def _insert(schema: str, key: tuple[int, str], *, special: bool = False, key_only: bool = False) -> sql.Composable:
    names, values = [], []
    for spec in dbz.COLUMNS:
        if spec.name in dbz.KEY:
            text = str(key[dbz.KEY.index(spec.name)])
        elif key_only:
            continue
        else:
            text = spec.special[0] if special and spec.special is not None else spec.text
        names.append(sql.Identifier(spec.name))
        values.append(sql.SQL("{}::{}").format(sql.Literal(text), _type(spec, schema)))
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(schema, "items"), sql.SQL(", ").join(names), sql.SQL(", ").join(values)
    )


def _start_our_source(tmp_path: Path, stack: Stack, name: str, schema: str) -> subprocess.Popen[bytes]:
    port = free_port()
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "schema_registry": {"url": stack.registry_url},
        "source": {
            "dsn": "${CDC_SOURCE_DSN}", "topic_prefix": name, "slot": {"name": name},
            "publication": {"name": name}, "tables": {"include": [f"{schema}.items"]},
            "snapshot": {"mode": "initial"}, "heartbeat": {"interval_s": 1}, "status_interval_s": 1,
            "schema_style": "debezium",
        },
        "server": {"port": port},
    }  # fmt: skip
    path = tmp_path / "ours.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "CDC_SOURCE_DSN": stack.source_dsn}
    with (tmp_path / "ours.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run", str(path), "--only", "source"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    wait_until(lambda: http_get(port, "/readyz")[0] == 200, 120, "our source's /readyz", process)
    return process


def _latest(registry_url: str, subject: str) -> Any:
    with urllib.request.urlopen(f"{registry_url}/subjects/{subject}/versions/latest", timeout=10) as response:
        return json.loads(json.loads(response.read())["schema"])


def _normal(avro: Any, namespace: str, prefix: str) -> Any:
    """`avro` with every named type's full name spelled out (no `namespace` keys), the topic prefix as `P`: the
    registry prints namespaces equal to the enclosing one differently for different writers."""
    if isinstance(avro, list):
        return [_normal(a, namespace, prefix) for a in avro]
    if isinstance(avro, str):
        full = avro if "." in avro or avro in _PRIMITIVES else f"{namespace}.{avro}"
        return full.replace(prefix, "P", 1) if full.startswith(prefix) else full
    if not isinstance(avro, dict):
        return avro
    out = dict(avro)
    if out.get("type") in ("record", "enum", "fixed"):
        name = out.pop("name")
        own = out.pop("namespace", None)
        full = name if "." in name else f"{own or namespace}.{name}"
        out["name"] = full.replace(prefix, "P", 1) if full.startswith(prefix) else full
        namespace = full.rsplit(".", 1)[0]
    for key in ("type", "items", "values"):
        if key in out and not (key == "type" and isinstance(out[key], str) and out[key] in _PRIMITIVES + _COMPLEX):
            out[key] = _normal(out[key], namespace, prefix)
    if "fields" in out:
        out["fields"] = [{**f, "type": _normal(f["type"], namespace, prefix)} for f in out["fields"]]
    if "connect.name" in out and out["connect.name"].startswith(prefix):
        out["connect.name"] = out["connect.name"].replace(prefix, "P", 1)
    return out


_PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
_COMPLEX = ["record", "enum", "fixed", "array", "map"]


def _ours_only(field: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in field.items() if not k.startswith(("pg.", "aliases"))}


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return bool(got == want)


def test_debezium_and_our_source_register_and_send_the_same(
    stack: Stack, unique_name: Callable[[str], str], connect_worker: StartWorker, tmp_path: Path
) -> None:
    schema, theirs, ours = unique_name("dbzs"), unique_name("dbzs"), unique_name("ours")
    slot, publication = unique_name("dbzs_slot"), unique_name("dbzs_pub")
    with pg_connect(stack.source_dsn) as conn, scratch_schema(conn, schema):
        conn.execute(sql.SQL(dbz.ENUM_DDL.format(schema=sql.Identifier(schema).as_string(conn))))  # type: ignore[arg-type]
        conn.execute(sql.SQL(dbz.DOMAIN_DDL.format(schema=sql.Identifier(schema).as_string(conn))))  # type: ignore[arg-type]
        conn.execute(_ddl(schema))
        conn.execute(_insert(schema, (1, "a")))
        conn.execute(_insert(schema, (2, "b"), special=True))
        conn.execute(_insert(schema, (3, "c"), key_only=True))
        worker = process = None
        try:
            settings = postgres_source_settings(
                stack.source_dsn, stack.registry_url, topic_prefix=theirs, tables=[f"{schema}.items"],
                slot=slot, publication=publication,
            )  # fmt: skip
            worker = connect_worker({theirs: settings})
            process = _start_our_source(tmp_path, stack, ours, schema)
            for prefix in (theirs, ours):
                consume_all(stack.kafka_bootstrap, f"{prefix}.{schema}.items", min_count=3, timeout=120, idle=0.5)
            conn.execute(_insert(schema, (4, "d"), special=True))
            conn.execute(sql.SQL("UPDATE {} SET c_text = 'changed', c_int2_nn = 9 WHERE id = 1").format(
                sql.Identifier(schema, "items")))  # fmt: skip
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(sql.Identifier(schema, "items")))
            messages = {
                prefix: consume_all(stack.kafka_bootstrap, f"{prefix}.{schema}.items", min_count=RECORDS,
                                    timeout=120, idle=1.0)
                for prefix in (theirs, ours)
            }  # fmt: skip
        finally:
            if process is not None:
                stop_connector(process)
            if worker is not None:
                worker.stop()
            drop_slot_and_publication(stack.source_dsn, slot, publication)
            drop_replication_state(stack.source_dsn, ours, ours)

    # Schemas, field by field.
    topics = {prefix: f"{prefix}.{schema}.items" for prefix in (theirs, ours)}
    registered = {
        (prefix, part): _normal(_latest(stack.registry_url, f"{topic}-{part}"), "", prefix)
        for prefix, topic in topics.items()
        for part in ("key", "value")
    }
    their_key, our_key = registered[(theirs, "key")], registered[(ours, "key")]
    assert {**our_key, "fields": [_ours_only(f) for f in our_key["fields"]]} == their_key
    their_value, our_value = registered[(theirs, "value")], registered[(ours, "value")]
    our_fields = {f["name"]: f for f in our_value["fields"]}
    their_fields = {f["name"]: f for f in their_value["fields"]}
    assert list(our_fields) == [*their_fields, *dbz.OUR_EXTRAS["envelope"]]
    assert {k: v for k, v in our_value.items() if k != "fields"} == {
        k: v for k, v in their_value.items() if k != "fields"
    }
    for name in ("transaction", "op", "ts_ms", "ts_us", "ts_ns", "after"):
        assert our_fields[name] == their_fields[name], name
    our_source, their_source = our_fields["source"]["type"], their_fields["source"]["type"]
    extras = list(dbz.OUR_EXTRAS["source"])
    assert [f for f in our_source["fields"] if f["name"] not in extras] == their_source["fields"]
    assert [f["name"] for f in our_source["fields"]][-len(extras):] == extras
    our_row = {f["name"]: _ours_only(f) for f in our_fields["before"]["type"][1]["fields"]}
    their_row = {f["name"]: f for f in their_fields["before"]["type"][1]["fields"]}
    assert set(our_row) - set(their_row) == set(dbz.NOT_CAPTURED)
    documented = {s.name: s.ours_field for s in dbz.COLUMNS if s.ours_field is not None}
    differences = []
    for name, field in their_row.items():
        want = field if name not in documented else {"name": name, **_normal(documented[name], "", theirs)}
        if our_row[name] != want:
            differences.append((name, our_row[name], want))
    assert differences == []

    # Values, record by record.
    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        decoder = Decoder(registry)
        decoded = {
            prefix: [
                (decoder.decode(m.key())[0], None if m.value() is None else decoder.decode(m.value())[0])
                for m in found
                if m.key() is not None  # not our snapshot-complete marker (docs/event-format.md)
            ]
            for prefix, found in messages.items()
        }
    theirs_by_key = _by_key_and_op(decoded[theirs])
    ours_by_key = _by_key_and_op(decoded[ours])
    assert sorted(ours_by_key) == sorted(theirs_by_key)
    assert [op for _, op in sorted(theirs_by_key)].count("tombstone") == 1
    specials = {s.name: s for s in dbz.COLUMNS if s.captured}
    problems: list[tuple[Any, ...]] = []
    for where, their_value_ in theirs_by_key.items():
        our_value_ = ours_by_key[where]
        if their_value_ is None or our_value_ is None:
            assert their_value_ is None and our_value_ is None, where
            continue
        for image in ("before", "after"):
            mine, theirs_row = our_value_[image], their_value_[image]
            if theirs_row is None or mine is None:
                if (theirs_row is None) != (mine is None):
                    problems.append((where, image, mine, theirs_row))
                continue
            assert set(mine) - set(theirs_row) == set(dbz.NOT_CAPTURED)
            for name, sent in theirs_row.items():
                # A delete's `before` holds the key only (REPLICA IDENTITY DEFAULT): nothing to map there.
                want = sent if where[1] == "d" else _documented(specials[name], sent, streamed=where[1] != "r")
                if not _same(mine[name], want):
                    problems.append((where, image, name, mine[name], want))
        for name in dbz.SOURCE["fields"]:
            field = name["name"]
            if field in dbz.SOURCE_VALUE_DIFFERENCES:
                continue
            if our_value_["source"][field] != their_value_["source"][field]:
                problems.append((where, "source", field, our_value_["source"][field], their_value_["source"][field]))
        if where[1] != "r":  # the same change in the same WAL: the same transaction and position
            for field in ("txId", "lsn"):
                if our_value_["source"][field] != their_value_["source"][field]:
                    problems.append((where, "source", field, our_value_["source"][field],
                                     their_value_["source"][field]))  # fmt: skip
    assert problems == []


def _by_key_and_op(records: list[tuple[Any, Any]]) -> dict[tuple[Any, str], Any]:
    out: dict[tuple[Any, str], Any] = {}
    for key, value in records:
        op = "tombstone" if value is None else value["op"]
        out[(json.dumps(key, sort_keys=True), op)] = value
    return out


def _documented(spec: dbz.DebeziumField, theirs: Any, *, streamed: bool) -> Any:
    """What we write where Debezium writes `theirs` (the differences docs/event-format.md names)."""
    if spec.special is not None and _same(theirs, spec.special[2 if streamed else 1]):
        return spec.ours_special
    if _same(theirs, spec.value):
        return spec.ours_first
    return theirs
