"""Table patterns and column selection."""

from __future__ import annotations

import pytest

from sources.postgres.config import TableOptions
from sources.postgres.selection import TableRef, captured_columns, select_tables

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
