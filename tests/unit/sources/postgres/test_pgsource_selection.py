"""Table patterns and column selection."""

from __future__ import annotations

import pytest

from core.checks import Problem
from core.errors import PrerequisiteError
from sources.postgres.config import TableOptions
from sources.postgres.prerequisites import TableKeys, keyless_problem
from sources.postgres.selection import TableRef, admit, captured_columns, select_tables, tables_to_copy

pytestmark = pytest.mark.unit


def test_include_exclude_patterns() -> None:
    tables = [TableRef("public", "a"), TableRef("public", "audit_log"), TableRef("sales", "orders"), TableRef("x", "y")]
    chosen = select_tables(tables, ["public.*", "sales.ord?rs"], ["public.audit_*"])
    assert chosen == [TableRef("public", "a"), TableRef("sales", "orders")]


def test_patterns_are_case_sensitive() -> None:
    assert select_tables([TableRef("public", "Mixed")], ["public.mixed"], []) == []


def test_captured_columns_keep_table_order() -> None:
    columns = ["id", "name", "secret", "note"]
    assert captured_columns(TableOptions(), columns) == columns
    assert captured_columns(TableOptions(columns_exclude=["secret"]), columns) == ["id", "name", "note"]
    assert captured_columns(TableOptions(columns_include=["note", "id"]), columns) == ["id", "note"]


# --- which tables are captured, skipped, copied -----------------------------------------------------------

A, NOPK, B = TableRef("public", "a"), TableRef("public", "nopk"), TableRef("public", "b")


@pytest.mark.parametrize(
    ("keys", "key_columns", "usable"),
    [
        (TableKeys(True, "d", has_pk=True, has_identity_index=False), None, True),
        (TableKeys(True, "d", has_pk=False, has_identity_index=False), None, False),
        (TableKeys(True, "n", has_pk=True, has_identity_index=False), None, False),
        (TableKeys(True, "i", has_pk=False, has_identity_index=True), None, True),
        (TableKeys(True, "f", has_pk=True, has_identity_index=False), None, True),
        (TableKeys(True, "f", has_pk=False, has_identity_index=False), ["id"], True),
        (TableKeys(True, "f", has_pk=False, has_identity_index=False), None, False),
    ],
    ids=["pk", "default-no-pk", "nothing", "using-index", "full-pk", "full-key-columns", "full-no-key"],
)
def test_a_usable_replica_identity(keys: TableKeys, key_columns: list[str] | None, usable: bool) -> None:
    problem = keyless_problem(NOPK, keys, key_columns)
    assert (problem is None) is usable
    if problem is not None:
        assert "ALTER TABLE public.nopk REPLICA IDENTITY FULL" in problem.fix and "primary key" in problem.fix


def test_keyless_tables_are_skipped_and_the_others_captured() -> None:
    problem = Problem("source", "table public.nopk has no primary key", "add one")
    admission = admit([A, NOPK, B], {NOPK: problem}, "skip")
    assert admission.capture == [A, B]
    assert admission.skipped == {NOPK: problem}


def test_keyless_tables_stop_the_start_when_configured() -> None:
    problem = Problem("source", "table public.nopk has no primary key", "add one")
    with pytest.raises(PrerequisiteError, match=r"public\.nopk has no primary key -> fix: add one"):
        admit([A, NOPK], {NOPK: problem}, "stop")
    assert admit([A], {NOPK: problem}, "stop").capture == [A]  # a keyless table that does not match is no reason


def test_tables_new_to_an_existing_publication_are_copied() -> None:
    assert tables_to_copy([A, B], [A, NOPK], copy=True) == [B]
    assert tables_to_copy([A, B], None, copy=True) == []  # first start: the snapshot covers every table
    assert tables_to_copy([A, B], [A], copy=False) == []  # snapshot.mode: never
