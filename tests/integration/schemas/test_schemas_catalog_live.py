"""`describe_tables` against the live catalog: keys, replica identity, domains, arrays, generated/dropped columns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from schemas.catalog import describe_tables
from tests.support.helpers import scratch_schema
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def schema(stack: Stack, unique_name: Callable[[str], str]) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    name = unique_name("schemas_catalog")
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn, scratch_schema(conn, name):
        yield conn, name


def run(conn: psycopg.Connection[Any], schema: str, statements: str) -> None:
    conn.execute(sql.SQL(statements.replace("{s}", "{}")).format(*[sql.Identifier(schema)] * statements.count("{s}")))


def test_describe_tables(schema: tuple[psycopg.Connection[Any], str]) -> None:
    conn, s = schema
    run(conn, s, "CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy')")
    run(conn, s, "CREATE DOMAIN {s}.amount AS numeric(12,2) NOT NULL")
    run(conn, s, "CREATE DOMAIN {s}.big_amount AS {s}.amount")
    run(conn, s, """CREATE TABLE {s}."Mixed Case" (
        b text, a int, gone int, c {s}.big_amount, d {s}.mood[], e {s}.mood, f varchar(20)[],
        g numeric(7,3)[], h int GENERATED ALWAYS AS (a * 2) STORED, i int[], j {s}.amount[],
        PRIMARY KEY (b, a) INCLUDE (f))""")
    run(conn, s, 'ALTER TABLE {s}."Mixed Case" DROP COLUMN gone')
    run(conn, s, "CREATE TABLE {s}.by_index (x int NOT NULL, y int NOT NULL, z text)")
    run(conn, s, "CREATE UNIQUE INDEX by_index_yx ON {s}.by_index (y, x)")
    run(conn, s, "ALTER TABLE {s}.by_index REPLICA IDENTITY USING INDEX by_index_yx")
    run(conn, s, "CREATE TABLE {s}.keyless (v text) ")
    run(conn, s, "ALTER TABLE {s}.keyless REPLICA IDENTITY FULL")
    run(conn, s, "CREATE TABLE {s}.parted (k int PRIMARY KEY, v text) PARTITION BY RANGE (k)")
    run(conn, s, "CREATE VIEW {s}.a_view AS SELECT 1 AS one")

    found = describe_tables(conn, [(s, "Mixed Case"), (s, "by_index"), (s, "keyless"), (s, "parted"),
                                   (s, "a_view"), (s, "missing")])  # fmt: skip
    assert set(found) == {(s, "Mixed Case"), (s, "by_index"), (s, "keyless"), (s, "parted")}

    mixed = found[(s, "Mixed Case")]
    assert mixed.has_primary_key and mixed.replica_identity == "d"
    assert mixed.key_columns == ("b", "a")  # key order, not table order; INCLUDE columns are not key columns
    cols = {c.name: c for c in mixed.columns}
    assert [c.name for c in mixed.columns] == ["b", "a", "c", "d", "e", "f", "g", "h", "i", "j"]  # dropped column gone
    assert (cols["b"].key_position, cols["a"].key_position, cols["f"].key_position) == (1, 2, None)
    assert cols["b"].not_null and cols["b"].toastable and not cols["a"].toastable
    c = cols["c"]
    assert (c.base_kind, c.type_name, c.resolved.typname, c.not_null) == ("d", f"{s}.big_amount", "numeric", True)
    assert c.typmod == ((12 << 16) | 2) + 4  # the inner domain's typmod
    d = cols["d"]
    assert (d.base_kind, d.type_name, d.resolved.kind) == ("a", f"{s}.mood[]", "a")
    assert d.element is not None and d.element.kind == "e"
    assert d.enum_labels == ("sad", "ok", "happy")
    assert cols["e"].enum_labels == ("sad", "ok", "happy") and cols["e"].base_kind == "e"
    assert cols["f"].type_name == "character varying(20)[]"
    assert cols["g"].element is not None and cols["g"].element.typname == "numeric"
    assert cols["g"].typmod == ((7 << 16) | 3) + 4
    assert cols["h"].generated and not cols["i"].generated
    assert cols["i"].type_name == "integer[]"
    j = cols["j"]  # an array of a domain: elements unwrapped, the domain's typmod applies to them
    assert j.element is not None and j.element.typname == "numeric" and j.typmod == ((12 << 16) | 2) + 4

    by_index = found[(s, "by_index")]
    assert (by_index.has_primary_key, by_index.replica_identity, by_index.key_columns) == (False, "i", ("y", "x"))
    keyless = found[(s, "keyless")]
    assert (keyless.has_primary_key, keyless.replica_identity, keyless.key_columns) == (False, "f", ())
    assert found[(s, "parted")].key_columns == ("k",)
