"""The key/value schemas this source would produce, now or after a migration (`cdc schemas check`).

Same table selection and per-table options as the running source, so the check sees what a deployment
would register.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from core.errors import ConfigError, RetriableError
from schemas.catalog import describe_tables
from schemas.envelope import TableSchemas, build_table_schemas
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.selection import options_for, resolve_tables

_TX_CONTROL = frozenset({"begin", "commit", "rollback", "end", "abort", "start"})
_SQL_NOISE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$[A-Za-z0-9_]*\$).*?\1", re.S)


def transaction_control_in(script: str) -> list[str]:
    """Statements of `script` that would end the check's transaction (so the migration would really commit)."""
    stripped = _SQL_NOISE.sub(" ", script)
    found = []
    for statement in stripped.split(";"):
        words = statement.split()
        if words and words[0].lower() in _TX_CONTROL:
            found.append(" ".join(words[:2]).upper())
    return found


def derive_schemas(conn: psycopg.Connection[Any], source: PostgresSourceConfig) -> list[TableSchemas]:
    """The key/value schemas the source would build now for every table its config selects.

    Same selection (include/exclude patterns) and the same per-table options as the running source.
    """
    tables = resolve_tables(conn, source)
    infos = describe_tables(conn, [(t.schema, t.table) for t in tables])
    derived = []
    for table in tables:
        info = infos.get((table.schema, table.table))
        if info is None:
            continue
        options = options_for(source, table)
        derived.append(
            build_table_schemas(
                info,
                topic=f"{source.topic_prefix}.{table.schema}.{table.table}",
                topic_prefix=source.topic_prefix,
                decimal_handling=source.decimal_handling,
                schema_style=source.schema_style,
                skip_unsupported=options.skip_unsupported_columns,
                columns_include=options.columns_include,
                columns_exclude=options.columns_exclude,
                key_columns=options.key_columns,
            )
        )
    return derived


def derive_schemas_after(
    dsn: str, source: PostgresSourceConfig, migration: str | None, *, lock_timeout_ms: int = 5000
) -> list[TableSchemas]:
    """`derive_schemas` on the database as it is, or as it would be after `migration` (rolled back).

    The migration really runs, inside one transaction that is always rolled back: it takes its locks
    (bounded by `lock_timeout_ms`) and does its work (a table rewrite costs what it costs); run the check
    against a staging copy when that matters.
    """
    if migration is not None:
        control = transaction_control_in(migration)
        if control:
            raise ConfigError(
                f"the migration controls its own transaction ({', '.join(control)}): it would commit for real",
                hint="remove BEGIN/COMMIT/ROLLBACK from the file; the check wraps it in a rolled-back transaction",
            )
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            try:
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
                if migration is not None:
                    try:
                        conn.execute(migration.encode())
                    except psycopg.Error as exc:
                        raise ConfigError(
                            f"the migration fails on the source database: {_first_line(exc)}",
                            hint="fix the migration (it was rolled back)",
                        ) from None
                    if conn.info.transaction_status != TransactionStatus.INTRANS:
                        raise ConfigError("the migration ended the check's transaction",
                                          hint="remove transaction control statements from the file")  # fmt: skip
                return derive_schemas(conn, source)
            finally:
                conn.rollback()
    except psycopg.OperationalError as exc:
        raise RetriableError(
            f"cannot connect to the source database: {_first_line(exc)}",
            hint="check `source.dsn` and that the server is running",
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
