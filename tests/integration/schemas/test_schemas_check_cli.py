"""`cdc schemas check CONFIG [--migration FILE] [--json]` against the live source database and registry."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from connector.cli import app
from connector.config import load_config
from schemas.registry import SchemaRegistry
from sources.postgres.schema_preview import derive_schemas_after
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


class Scenario:
    def __init__(self, stack: Stack, tmp_path: Path, schema: str, prefix: str) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.schema = schema
        self.prefix = prefix

    def config(self, compatibility: str = "BACKWARD") -> Path:
        path = self.tmp_path / f"config-{compatibility}.yaml"
        path.write_text(
            f"""
name: schemas-check
kafka:
  bootstrap_servers: {self.stack.kafka_bootstrap}
schema_registry:
  url: {self.stack.registry_url}
  compatibility: {compatibility}
source:
  dsn: {self.stack.source_dsn}
  topic_prefix: {self.prefix}
  slot: {{name: {self.schema}}}
  publication: {{name: {self.schema}}}
  tables:
    include: ["{self.schema}.*"]
  table_options:
    {self.schema}.notes:
      columns_exclude: [secret]
""",
            encoding="utf-8",
        )
        return path

    def migration(self, body: str) -> Path:
        path = self.tmp_path / "migration.sql"
        path.write_text(body.replace("{s}", self.schema), encoding="utf-8")
        return path

    def register_current(self, compatibility: str = "BACKWARD") -> None:
        loaded = load_config(self.config(compatibility))
        assert loaded.source is not None
        derived = derive_schemas_after(self.stack.source_dsn, loaded.source, None)
        with SchemaRegistry(loaded.schema_registry) as registry:
            for table_schemas in derived:
                if table_schemas.key_schema is not None:
                    registry.register(f"{table_schemas.topic}-key", table_schemas.key_schema)
                registry.register(f"{table_schemas.topic}-value", table_schemas.value_schema)

    def run(self, *args: str) -> Any:
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            return CliRunner().invoke(app, ["schemas", "check", *args])
        finally:
            # `cdc` configures logging onto the runner's stream, which is closed after the call.
            root.handlers[:] = handlers


@pytest.fixture
def scenario(stack: Stack, tmp_path: Path, unique_name: Callable[[str], str]) -> Iterator[Scenario]:
    schema = unique_name("schemas_check")
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(
            "CREATE TABLE {}.orders (id bigint PRIMARY KEY, code text NOT NULL, amount numeric(10,2), note text)"
        ).format(sql.Identifier(schema)))  # fmt: skip
        conn.execute(sql.SQL("CREATE TABLE {}.notes (id int PRIMARY KEY, body text, secret text)").format(
            sql.Identifier(schema)))  # fmt: skip
        try:
            yield Scenario(stack, tmp_path, schema, unique_name("chk"))
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _columns(stack: Stack, schema: str, table: str) -> list[str]:
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return [r[0] for r in rows]


def test_new_subjects_are_compatible(scenario: Scenario) -> None:
    result = scenario.run(str(scenario.config()), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["compatible"] is True
    subjects = {s["subject"]: s for s in report["subjects"]}
    assert set(subjects) == {f"{scenario.prefix}.{scenario.schema}.{t}-{k}" for t in ("orders", "notes")
                             for k in ("key", "value")}  # fmt: skip
    assert all(s["status"] == "new" for s in subjects.values())


def test_migrations_against_registered_schemas(scenario: Scenario) -> None:
    scenario.register_current()
    config = str(scenario.config())
    unchanged = scenario.run(config)
    assert unchanged.exit_code == 0, unchanged.output
    assert "4 subjects checked, 0 incompatible" in unchanged.output

    added = scenario.run(config, "--migration", str(scenario.migration(
        "ALTER TABLE {s}.orders ADD COLUMN shipped_at timestamptz;\n"
        "-- a comment with COMMIT in it; and a string: 'ROLLBACK;'\n"
        "ALTER TABLE {s}.notes ADD COLUMN secret2 text DEFAULT 'x';"
    )), "--json")  # fmt: skip
    assert added.exit_code == 0, added.output
    report = json.loads(added.stdout)
    value = next(s for s in report["subjects"] if s["subject"].endswith(".orders-value"))
    assert value["status"] == "compatible"
    assert value["changes"] == ["column shipped_at added (nullable, default null)"]
    assert "shipped_at" not in _columns(scenario.stack, scenario.schema, "orders")  # rolled back

    retyped = scenario.run(config, "--migration", str(scenario.migration(
        "ALTER TABLE {s}.orders ALTER COLUMN code TYPE integer USING length(code);"
    )))  # fmt: skip
    assert retyped.exit_code == 1, retyped.output
    lines = [line for line in retyped.stdout.splitlines() if line.startswith("incompatible:")]
    assert len(lines) == 1
    assert f"{scenario.prefix}.{scenario.schema}.orders-value" in lines[0]
    assert "column code changed type: text (string) -> integer (int)" in lines[0]
    assert "Fix: add a new column" in lines[0]

    # Under BACKWARD a dropped column is compatible (new readers ignore it) ...
    dropped = scenario.run(config, "--migration", str(scenario.migration("ALTER TABLE {s}.orders DROP COLUMN note;")))
    assert dropped.exit_code == 0, dropped.output


def test_dropping_a_required_column_is_incompatible_under_full(scenario: Scenario) -> None:
    scenario.register_current("FULL")
    config = str(scenario.config("FULL"))
    # Non-key columns are optional (default null) in the schemas, so dropping one stays FULL-compatible ...
    optional = scenario.run(config, "--migration", str(scenario.migration("ALTER TABLE {s}.orders DROP COLUMN note;")))
    assert optional.exit_code == 0, optional.output
    # ... but a NOT NULL key column without default is required: old readers cannot read the new data.
    required = scenario.run(config, "--json", "--migration", str(scenario.migration(
        "ALTER TABLE {s}.notes DROP CONSTRAINT notes_pkey;\n"
        "ALTER TABLE {s}.notes ADD PRIMARY KEY (body);\n"
        "ALTER TABLE {s}.notes DROP COLUMN id;"
    )))  # fmt: skip
    assert required.exit_code == 1, required.output
    report = json.loads(required.stdout)
    bad = {s["subject"]: s for s in report["subjects"] if not s["compatible"]}
    value = bad[f"{scenario.prefix}.{scenario.schema}.notes-value"]
    assert "column id removed (it had no default, so readers of the old schema need it)" in value["changes"]
    assert any("id: the reader requires it" in p for p in value["problems"]), value
    assert f"{scenario.prefix}.{scenario.schema}.notes-key" in bad


def test_migration_with_transaction_control_is_refused(scenario: Scenario) -> None:
    result = scenario.run(str(scenario.config()), "--migration", str(scenario.migration(
        "BEGIN; ALTER TABLE {s}.orders ADD COLUMN x int; COMMIT;"
    )))  # fmt: skip
    assert result.exit_code == 1
    assert "controls its own transaction (BEGIN, COMMIT)" in result.output
    assert "x" not in _columns(scenario.stack, scenario.schema, "orders")


def test_failing_migration_is_reported(scenario: Scenario) -> None:
    result = scenario.run(str(scenario.config()), "--migration", str(scenario.migration(
        "ALTER TABLE {s}.orders ADD COLUMN x int; ALTER TABLE {s}.nope ADD COLUMN y int;"
    )))  # fmt: skip
    assert result.exit_code == 1
    assert "the migration fails on the source database" in result.output
    assert "nope" in result.output
