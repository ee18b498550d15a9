"""Destination tables: names, the catalog as it is, and the DDL that makes it fit a value schema.

Every identifier is composed with `psycopg.sql.Identifier`. A name PostgreSQL would not keep exactly (longer
than 63 bytes, which it silently truncates and which could then collide with another name; or containing NUL)
is refused with a message instead of being created under a different name.

Bookkeeping columns (names are part of the contract, see docs/sink.md):
`__cdc_commit_lsn`, `__cdc_lsn` (bigint: the WAL position of the change that last wrote the row; a change is
applied only when its pair is greater), `__cdc_change_id` (uuid of that change); with soft deletes
`__cdc_deleted` (boolean) and `__cdc_deleted_at` (timestamptz); in append mode `__cdc_op`, `__cdc_ts_ms`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from core.errors import ConfigError, SchemaError
from sinks.postgres.changes import CDC_COLUMN_PREFIX, Change, Shape
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.evolution import (
    AddColumn,
    DropColumn,
    DropNotNull,
    Existing,
    Policy,
    RenameColumn,
    Step,
    Widen,
    changes_columns,
    plan,
    widens_zone,
)
from sinks.postgres.types import DestinationType, ValueConverter

log = logging.getLogger(__name__)

MAX_IDENTIFIER_BYTES = 63

COMMIT_LSN = "__cdc_commit_lsn"
LSN = "__cdc_lsn"
CHANGE_ID = "__cdc_change_id"
DELETED = "__cdc_deleted"
DELETED_AT = "__cdc_deleted_at"
OP = "__cdc_op"
TS_MS = "__cdc_ts_ms"


def check_identifier(name: str, what: str) -> str:
    """`name` unchanged if PostgreSQL keeps it exactly, else a ConfigError naming the problem."""
    if not name:
        raise ConfigError(f"{what} name is empty", hint="map it to a name with `table_map` or the table name format")
    if "\x00" in name:
        raise ConfigError(f"{what} name {name!r} contains a NUL character", hint="PostgreSQL identifiers cannot")
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"{what} name {name!r} is {size} bytes; PostgreSQL truncates names to {MAX_IDENTIFIER_BYTES} bytes, "
            "so it would be created under another name (and could collide with a similar one)",
            hint="map it to a shorter name (`table_map` for tables)",
        )
    return name


@dataclass(frozen=True, slots=True, order=True)
class TableName:
    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def destination_of(change: Change, config: PostgresSinkConfig) -> TableName:
    mapped = config.table_map.get(change.topic)
    if mapped is None:
        mapped = config.table_name_format.format(
            topic=change.topic, schema=change.source_schema, table=change.source_table
        )
    return TableName(
        check_identifier(config.target_schema, "target schema"), check_identifier(mapped, "destination table")
    )


@dataclass(frozen=True, slots=True)
class TargetTable:
    """A destination table as the apply path writes it: which shape columns go where, with which converters."""

    name: TableName
    oid: int
    """The table's oid: its identity in the ledger (a table dropped and created again is a new destination)."""
    columns: tuple[str, ...]
    """Shape columns that exist in the table, in shape order (the ones written)."""
    types: tuple[str, ...]
    """Their types in the table: a widened column is another target (its stage table has the new type)."""
    converters: tuple[ValueConverter | None, ...]
    key: tuple[str, ...]
    append: bool
    soft: bool


@dataclass(frozen=True, slots=True)
class _Existing:
    oid: int
    columns: Mapping[str, tuple[str, bool, bool]]  # name -> (format_type, not null, has default)
    key: tuple[str, ...]
    unique_sets: tuple[frozenset[str], ...]


def _read(conn: psycopg.Connection[Any], table: TableName) -> _Existing | None:
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef, c.oid
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (table.schema, table.name),
    ).fetchall()
    if not rows:
        return None
    indexes = conn.execute(
        """
        SELECT i.indisprimary,
               array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, pos)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.pos)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
        """,
        (table.schema, table.name),
    ).fetchall()
    key: tuple[str, ...] = ()
    for primary, names in indexes:
        if primary:
            key = tuple(names)
    return _Existing(
        int(rows[0][4]), {r[0]: (r[1], r[2], r[3]) for r in rows}, key, tuple(frozenset(n) for _, n in indexes)
    )


def _bookkeeping(config: PostgresSinkConfig) -> list[tuple[str, str, bool]]:
    """(name, type, not null) of the columns the sink keeps next to the data."""
    if config.mode == "append":
        return [
            (OP, "text", True), (CHANGE_ID, "uuid", True), (COMMIT_LSN, "bigint", True), (LSN, "bigint", True),
            (TS_MS, "bigint", False),
        ]  # fmt: skip
    columns = [(COMMIT_LSN, "bigint", True), (LSN, "bigint", True), (CHANGE_ID, "uuid", True)]
    if config.delete_handling == "soft":
        columns += [(DELETED, "boolean", False), (DELETED_AT, "timestamp with time zone", False)]
    return columns


def _type_sql(pg_type: DestinationType) -> sql.Composable:
    # DestinationType only holds built-in names from a fixed list and integer modifiers (see types.py): its text
    # is safe to compose; it never carries schema-provided free text.
    return sql.SQL(str(pg_type))


def _validate_shape(shape: Shape, table: TableName) -> None:
    for column in shape.columns:
        check_identifier(column.name, f"column of {table}")
        if column.name.startswith(CDC_COLUMN_PREFIX):
            raise SchemaError(
                f"column {column.name!r} of {table} uses the sink's reserved prefix {CDC_COLUMN_PREFIX}",
                hint="rename the source column",
            )


class TableManager:
    """Creates and evolves destination tables; remembers what it verified per (table, shape).

    Everything runs inside the caller's transaction (the batch's): `settle` tells whether it committed, so what
    was verified in a transaction that rolled back (and its DDL with it) is verified again.
    """

    def __init__(self, config: PostgresSinkConfig) -> None:
        self._config = config
        self._policy = Policy(
            auto_evolve=config.auto_evolve,
            on_type_conflict=config.on_unsafe_schema_change,
            on_column_dropped=config.on_column_dropped,
            on_column_renamed=config.schema_changes.on_column_renamed,
        )
        self._verified: dict[tuple[TableName, Shape], TargetTable | None] = {}
        self._pending: list[tuple[TableName, Shape]] = []
        self._oids: dict[TableName, int] = {}

    def forget(self) -> None:
        self._verified.clear()
        self._pending.clear()
        self._oids.clear()

    def settle(self, committed: bool) -> None:
        """The transaction the last calls ran in ended: keep what it verified, or forget it (rolled back)."""
        if not committed:
            for key in self._pending:
                self._verified.pop(key, None)
                self._oids.pop(key[0], None)
        self._pending.clear()

    def oid(self, conn: psycopg.Connection[Any], table: TableName) -> int | None:
        """The table's oid, None when it does not exist."""
        known = self._oids.get(table)
        if known is not None:
            return known
        row = conn.execute("SELECT to_regclass(%s)::oid", (table.ident.as_string(conn),)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def target(
        self,
        conn: psycopg.Connection[Any],
        table: TableName,
        shape: Shape,
        position: tuple[int, int] | None = None,
    ) -> TargetTable | None:
        """The table ready for `shape` (created or evolved in the caller's transaction), or None when a key-only
        change (a delete from a tombstone) names a table that does not exist.

        `position` is that of the first change written with `shape`: when the table holds a row written after
        it, `shape` is an older schema replayed (a lagging partition), and the table is not made to drop, add or
        rename columns for it. None skips that check (a table fed by several sources, whose positions are not
        comparable).
        """
        cache_key = (table, shape)
        if cache_key in self._verified:
            return self._verified[cache_key]
        _validate_shape(shape, table)
        with conn.transaction():
            # Serialize DDL between sink instances (several groups may write one target); held to the batch's
            # commit, so a second sink reads the catalog as the first one left it.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdc-sink-ddl:{table}",))
            existing = _read(conn, table)
            if existing is None:
                if shape.key_only:
                    self._remember(cache_key, None)
                    return None
                if not self._config.auto_create:
                    raise SchemaError(
                        f"destination table {table} does not exist", hint="create it, or set `sink.auto_create: true`"
                    )
                self._create(conn, table, shape)
                existing = _read(conn, table)
                assert existing is not None
            elif not shape.key_only and self._evolve(conn, table, shape, existing, position):
                existing = _read(conn, table)
                assert existing is not None
                # Targets of other shapes of this table were checked against the columns as they were.
                for key in [k for k in self._verified if k[0] == table]:
                    del self._verified[key]
        target = self._target(table, shape, existing)
        self._remember(cache_key, target)
        return target

    def _remember(self, key: tuple[TableName, Shape], target: TargetTable | None) -> None:
        self._verified[key] = target
        self._pending.append(key)
        if target is not None:
            self._oids[key[0]] = target.oid

    def truncate_target(self, conn: psycopg.Connection[Any], table: TableName) -> TargetTable | None:
        """The table a truncate applies to (None if it does not exist: nothing to truncate)."""
        existing = _read(conn, table)
        if existing is None:
            return None
        return TargetTable(
            table, existing.oid, (), (), (), (), self._config.mode == "append", self._config.delete_handling == "soft"
        )

    def _create(self, conn: psycopg.Connection[Any], table: TableName, shape: Shape) -> None:
        append = self._config.mode == "append"
        if not append and not shape.key:
            raise SchemaError(
                f"messages for {table} have no key, so rows cannot be upserted",
                hint="give the source table a primary key (or key columns), or use `sink.mode: append`",
            )
        parts: list[sql.Composable] = []
        for column in shape.columns:
            not_null = not append and column.name in shape.key
            parts.append(
                sql.SQL("{} {}{}").format(
                    sql.Identifier(column.name),
                    _type_sql(column.type.pg_type),
                    sql.SQL(" NOT NULL" if not_null else ""),
                )
            )
        for name, type_text, not_null in _bookkeeping(self._config):
            default = " DEFAULT false" if name == DELETED else ""
            parts.append(
                sql.SQL("{} {}{}{}").format(
                    sql.Identifier(name),
                    sql.SQL(type_text),
                    sql.SQL(" NOT NULL" if not_null else ""),
                    sql.SQL(default),
                )
            )
        key = (CHANGE_ID,) if append else shape.key
        parts.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key))))
        # CREATE SCHEMA needs CREATE on the database even when the schema exists: not asked of a role that owns it.
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (table.schema,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table.ident, sql.SQL(", ").join(parts)))
        log.info("created destination table %s", table)

    def _evolve(
        self,
        conn: psycopg.Connection[Any],
        table: TableName,
        shape: Shape,
        existing: _Existing,
        position: tuple[int, int] | None,
    ) -> bool:
        """Run the DDL that makes `existing` take `shape`; whether any ran."""
        config = self._config
        changed = False
        for name, type_text, _ in _bookkeeping(config):
            if name in existing.columns:
                continue
            if not config.auto_evolve:
                raise SchemaError(
                    f"destination table {table} lacks the bookkeeping column {name}",
                    hint="add it (see docs/sink.md) or set `sink.auto_evolve: true`",
                )
            # Existing rows get the lowest position, so any change replayed onto them wins the guard.
            default = {COMMIT_LSN: " DEFAULT 0", LSN: " DEFAULT 0", DELETED: " DEFAULT false"}.get(name, "")
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}{}").format(
                    table.ident, sql.Identifier(name), sql.SQL(type_text), sql.SQL(default)
                )
            )
            changed = True
        columns = {name: Existing(*found) for name, found in existing.columns.items()}
        try:
            steps = plan(str(table), columns, shape, self._policy)
        except SchemaError:
            if not self._older(conn, table, position):
                raise
            log.warning(
                "%s: not changing its columns for a schema older than the rows it holds (a replay or a lagging "
                "partition); that schema's columns the table lacks are not written",
                table,
            )
            return changed
        if changes_columns(steps) and self._older(conn, table, position):
            log.warning(
                "%s: not adding, renaming or dropping columns for a schema older than the rows it holds (a replay "
                "or a lagging partition): %s",
                table,
                ", ".join(map(str, steps)),
            )
            steps = [step for step in steps if isinstance(step, (Widen, DropNotNull))]
        for step in steps:
            self._run(conn, table, step)
        return changed or bool(steps)

    def _older(self, conn: psycopg.Connection[Any], table: TableName, position: tuple[int, int] | None) -> bool:
        """Whether the table holds a row written by a change after `position`."""
        if position is None:
            return False
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE ({}, {}) > (%s, %s))").format(
                table.ident, sql.Identifier(COMMIT_LSN), sql.Identifier(LSN)
            ),
            position,
        ).fetchone()
        return bool(row and row[0])

    def _run(self, conn: psycopg.Connection[Any], table: TableName, step: Step) -> None:
        match step:
            case AddColumn(column, pg_type, default):
                add = sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    table.ident, sql.Identifier(column), _type_sql(pg_type)
                )
                if default is not None:
                    try:
                        with conn.transaction():
                            # Existing rows read the default, like the source's (a fast default: no rewrite).
                            conn.execute(
                                sql.SQL("{} DEFAULT {}::{}").format(add, sql.Literal(default), _type_sql(pg_type))
                            )
                        log.info("added column %s to %s (default %r)", column, table, default)
                        return
                    except psycopg.errors.DataError as exc:
                        log.warning(
                            "%s.%s: the source's default %r is not a %s value (%s); added without a default",
                            table, column, default, pg_type, exc.diag.message_primary,
                        )  # fmt: skip
                conn.execute(add)
                log.info("added column %s to %s", column, table)
            case Widen(column, old, new):
                using: sql.Composable = sql.SQL("")
                if widens_zone(old, new):
                    # The stored local times are read as UTC: the sink's choice, independent of any session's
                    # TimeZone (docs/sink.md).
                    using = sql.SQL(" USING {} AT TIME ZONE 'UTC'").format(sql.Identifier(column))
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}{}").format(
                        table.ident, sql.Identifier(column), _type_sql(new), using
                    )
                )
                log.info("widened column %s of %s from %s to %s", column, table, old, new)
            case RenameColumn(old, new):
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                        table.ident, sql.Identifier(old), sql.Identifier(new)
                    )
                )
                log.info("renamed column %s of %s to %s", old, table, new)
            case DropColumn(column):
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(table.ident, sql.Identifier(column))
                )
                log.info("dropped column %s of %s (dropped in the source)", column, table)
            case DropNotNull(column):
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(table.ident, sql.Identifier(column))
                )
                log.info("column %s of %s kept, now nullable (dropped in the source)", column, table)

    def _target(self, table: TableName, shape: Shape, existing: _Existing) -> TargetTable:
        config = self._config
        append = config.mode == "append"
        key = shape.key
        if not append:
            if not key:
                raise SchemaError(
                    f"messages for {table} have no key, so rows cannot be upserted",
                    hint="give the source table a primary key (or key columns), or use `sink.mode: append`",
                )
            if frozenset(key) not in existing.unique_sets:
                raise SchemaError(
                    f"{table} has no primary key or unique index on the message key {list(key)}",
                    hint="add one (upserts need it)",
                )
        columns = tuple(c for c in shape.columns if c.name in existing.columns)
        return TargetTable(
            table,
            existing.oid,
            tuple(c.name for c in columns),
            tuple(existing.columns[c.name][0] for c in columns),
            tuple(c.type.convert for c in columns),
            key,
            append,
            config.delete_handling == "soft",
        )


def group_by_table(
    changes: Sequence[Change], config: PostgresSinkConfig
) -> dict[TableName, list[Change]]:
    out: dict[TableName, list[Change]] = {}
    for change in changes:
        out.setdefault(destination_of(change, config), []).append(change)
    return dict(sorted(out.items()))
