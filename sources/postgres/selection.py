"""Which tables (and columns, and rows) are captured, and keeping the publication in step with that.

`resolve_tables` turns the include/exclude patterns into concrete `(schema, table)` pairs. `sync_publication`
creates the publication or adds/drops tables when the config's selection changes; on PostgreSQL 15+ per-table
column lists and row filters go into the publication itself, so the server never sends what is not wanted.
Before 15, column selection is applied client-side and row filters are refused (they cannot be evaluated
faithfully outside the server).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

import psycopg
from psycopg import sql

from core.checks import Problem
from core.errors import ConfigError, PrerequisiteError
from sources.postgres.config import PostgresSourceConfig, TableOptions

log = logging.getLogger(__name__)

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "cdc")


@dataclass(frozen=True, slots=True, order=True)
class TableRef:
    schema: str
    table: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def select_tables(candidates: list[TableRef], include: list[str], exclude: list[str]) -> list[TableRef]:
    """Apply include/exclude `schema.table` patterns (`*`, `?`) to the candidate tables, sorted."""
    return sorted(t for t in candidates if matches(str(t), include) and not matches(str(t), exclude))


@dataclass(frozen=True, slots=True)
class Admission:
    """Which of the matching tables are captured, and which are skipped (with the problem and its fix)."""

    capture: list[TableRef]
    skipped: dict[TableRef, Problem]


def admit(candidates: list[TableRef], keyless: Mapping[TableRef, Problem], on_keyless_table: str) -> Admission:
    """Apply `tables.on_keyless_table` to the matching tables, before anything touches the publication.

    A table without a usable replica identity is never captured: in a publication that publishes updates and
    deletes, the server would refuse the application's own UPDATE and DELETE on it. `stop` refuses to start.
    """
    skipped = {t: keyless[t] for t in candidates if t in keyless}
    if skipped and on_keyless_table == "stop":
        raise PrerequisiteError(
            "; ".join(f"{p.message} -> fix: {p.fix}" for p in skipped.values()),
            hint="or set source.tables.on_keyless_table: skip to capture the other tables",
        )
    return Admission([t for t in candidates if t not in skipped], skipped)


def log_skipped(admission: Admission, published: list[TableRef], publication: str) -> None:
    """One line per skipped table with its fix; louder for one an earlier version put into the publication."""
    for table, problem in admission.skipped.items():
        if table in published:
            log.warning(
                "publication %s holds %s, which has no usable replica identity, so the application's UPDATE and "
                "DELETE on it fail: removing it from the publication (publication.mode: create). %s -> fix: %s",
                publication, table, problem.message, problem.fix,
            )  # fmt: skip
        else:
            log.warning(
                "not capturing %s (source.tables.on_keyless_table: skip): %s -> fix: %s",
                table, problem.message, problem.fix,
            )  # fmt: skip


def tables_to_copy(tables: list[TableRef], published: list[TableRef] | None, *, copy: bool) -> list[TableRef]:
    """The tables whose existing rows must be copied: captured now, not published before.

    `published` is None when there was no publication (the first start, whose snapshot covers every table);
    `copy` is False when the snapshot mode takes no snapshots (`never`).
    """
    if published is None or not copy:
        return []
    before = set(published)
    return [t for t in tables if t not in before]


def resolve_tables(conn: psycopg.Connection, config: PostgresSourceConfig) -> list[TableRef]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> ALL(%s) "
        "AND n.nspname NOT LIKE 'pg_temp%%'",
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    return select_tables([TableRef(s, t) for s, t in rows], config.tables.include, config.tables.exclude)


def options_for(config: PostgresSourceConfig, table: TableRef) -> TableOptions:
    return config.table_options.get(str(table)) or TableOptions()


def captured_columns(options: TableOptions, all_columns: list[str]) -> list[str]:
    """The columns of a table that are captured, in table order."""
    include = options.columns_include
    wanted = all_columns if include is None else [c for c in all_columns if c in include]
    return [c for c in wanted if c not in options.columns_exclude]


def _table_columns(conn: psycopg.Connection, table: TableRef) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (sql.Identifier(table.schema, table.table).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def server_version(conn: psycopg.Connection) -> int:
    return conn.info.server_version


def _table_spec(
    conn: psycopg.Connection, config: PostgresSourceConfig, table: TableRef, pushdown: bool
) -> tuple[sql.Composable, dict[str, object]]:
    options = options_for(config, table)
    part: sql.Composable = table.identifier
    spec: dict[str, object] = {"table": str(table)}
    if pushdown and (options.columns_include is not None or options.columns_exclude):
        columns = captured_columns(options, _table_columns(conn, table))
        part = sql.SQL("{} ({})").format(part, sql.SQL(", ").join(map(sql.Identifier, columns)))
        spec["columns"] = columns
    if pushdown and options.row_filter:
        # The filter is operator-written SQL from the config file, trusted like the DSN itself.
        part = sql.SQL("{} WHERE ({})").format(part, sql.SQL(options.row_filter))
        spec["where"] = options.row_filter
    return part, spec


def publication_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone() is not None


def publication_tables(conn: psycopg.Connection, name: str) -> list[TableRef]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
    ).fetchall()
    return sorted(TableRef(s, t) for s, t in rows)


def sync_publication(conn: psycopg.Connection, config: PostgresSourceConfig, tables: list[TableRef]) -> list[TableRef]:
    """Make the publication publish exactly `tables` (mode `create`) or check it exists (mode `existing`).

    Returns the tables the publication publishes. The spec we applied is kept as the publication's comment
    (a hash), so a change of column lists or row filters in the config is noticed too.
    """
    name = config.publication.name
    pushdown = server_version(conn) >= 150000
    if not pushdown:
        filtered = [str(t) for t in tables if options_for(config, t).row_filter]
        if filtered:
            raise ConfigError(
                f"row filters need PostgreSQL 15+ (configured for {', '.join(filtered)})",
                hint="remove `row_filter` or upgrade the source server",
            )
    if config.publication.mode == "existing":
        if not publication_exists(conn, name):
            raise PrerequisiteError(
                f"publication {name!r} does not exist",
                hint=f"create it (CREATE PUBLICATION {name} FOR TABLE ...) or set publication.mode: create",
            )
        return publication_tables(conn, name)
    if not tables:
        raise ConfigError(
            "no table matches source.tables.include / exclude", hint="check the patterns (`schema.table`)"
        )
    parts, specs = zip(*(_table_spec(conn, config, t, pushdown) for t in tables), strict=True)
    digest = hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:32]
    table_list = sql.SQL(", ").join(parts)
    ident = sql.Identifier(name)
    with conn.transaction():
        current = conn.execute(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s", (name,)
        ).fetchone()
        if current is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(ident, table_list))
            log.info("created publication %s for %d tables", name, len(tables))
        elif current[0] != f"cdc-connector:{digest}" or publication_tables(conn, name) != sorted(tables):
            before = set(publication_tables(conn, name))
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(ident, table_list))
            added = sorted(set(tables) - before)
            dropped = sorted(before - set(tables))
            log.info(
                "publication %s now publishes %d tables (added: %s; dropped: %s)",
                name, len(tables), ", ".join(map(str, added)) or "-", ", ".join(map(str, dropped)) or "-",
            )
        conn.execute(sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(ident, sql.Literal(f"cdc-connector:{digest}")))
        _sync_via_root(conn, name, config.publication.via_partition_root)
    return sorted(tables)


def _sync_via_root(conn: psycopg.Connection, name: str, via_root: bool) -> None:
    """Set the publication's `publish_via_partition_root` to the config's (PostgreSQL 13+; before, no such option)."""
    if server_version(conn) < 130000:
        return
    row = conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if row is not None and bool(row[0]) != via_root:
        option = sql.SQL("true" if via_root else "false")
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = {})").format(
            sql.Identifier(name), option
        ))  # fmt: skip
        log.info("publication %s: publish_via_partition_root = %s", name, str(via_root).lower())
