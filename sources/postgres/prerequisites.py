"""What the source server must provide, checked before streaming and by `cdc validate`.

Each failed check is a `Problem` naming the cause and the fix. The checks only read catalogs and settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from core.checks import Problem
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.selection import TableRef, options_for

COMPONENT = "source"


def check_server(conn: psycopg.Connection, config: PostgresSourceConfig) -> list[Problem]:
    problems: list[Problem] = []
    row = conn.execute(
        "SELECT current_setting('wal_level'), r.rolreplication OR r.rolsuper, r.rolname, "
        "current_setting('max_replication_slots')::int, "
        "(SELECT count(*) FROM pg_replication_slots), "
        "(SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s), "
        "current_setting('max_wal_senders')::int, "
        "(SELECT count(*) FROM pg_stat_replication) "
        "FROM pg_roles r WHERE r.rolname = current_user",
        (config.slot.name,),
    ).fetchone()
    assert row is not None
    wal_level, can_replicate, role, max_slots, slots, ours, max_senders, senders = row
    if wal_level != "logical":
        problems.append(
            Problem(
                COMPONENT,
                f"wal_level is {wal_level!r}, logical replication needs 'logical'",
                "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
            )
        )
    if not can_replicate:
        problems.append(
            Problem(
                COMPONENT,
                f"role {role!r} lacks the REPLICATION attribute",
                f"ALTER ROLE {role} REPLICATION (and allow it in pg_hba.conf for replication connections)",
            )
        )
    if not ours and slots >= max_slots:
        problems.append(
            Problem(
                COMPONENT,
                f"no free replication slot ({slots} of max_replication_slots = {max_slots} used)",
                "drop an unused slot (pg_drop_replication_slot) or raise max_replication_slots and restart",
            )
        )
    if senders >= max_senders:
        problems.append(
            Problem(
                COMPONENT,
                f"no free WAL sender ({senders} of max_wal_senders = {max_senders} used)",
                "raise max_wal_senders and restart, or stop an idle replication client",
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class TableKeys:
    """What a table's catalog says about the keys of its events and about the server's UPDATE/DELETE check."""

    can_select: bool
    identity: str
    """`pg_class.relreplident`: `d` default (the primary key), `n` nothing, `f` full, `i` an index."""
    has_pk: bool
    has_identity_index: bool


def read_table_keys(conn: psycopg.Connection, table: TableRef) -> TableKeys | None:
    """The table's keys as the catalog has them now; None when the table does not exist."""
    row = conn.execute(
        "SELECT has_table_privilege(c.oid, 'SELECT'), c.relreplident, "
        "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
        "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, table.table),
    ).fetchone()
    if row is None:
        return None
    return TableKeys(bool(row[0]), str(row[1]), bool(row[2]), bool(row[3]))


def keyless_problem(table: TableRef, keys: TableKeys, key_columns: list[str] | None) -> Problem | None:
    """Why the table cannot be captured with event keys (None when it can).

    A table the server can replicate UPDATE/DELETE for has a primary key, REPLICA IDENTITY FULL or USING INDEX;
    FULL without a primary key needs `key_columns` too, for the events' keys.
    """
    usable = (
        (keys.identity == "d" and keys.has_pk)
        or (keys.identity == "i" and keys.has_identity_index)
        or (keys.identity == "f" and (keys.has_pk or bool(key_columns)))
    )
    if usable:
        return None
    return Problem(
        COMPONENT,
        f"table {table} has no primary key and its REPLICA IDENTITY cannot give event keys",
        f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL and configure "
        f"source.table_options['{table}'].key_columns, or exclude the table",
    )


def keyless_tables(
    conn: psycopg.Connection, config: PostgresSourceConfig, tables: list[TableRef]
) -> dict[TableRef, Problem]:
    """Those of `tables` that cannot be captured for lack of a usable replica identity, with the fix."""
    found: dict[TableRef, Problem] = {}
    for table in tables:
        keys = read_table_keys(conn, table)
        problem = None if keys is None else keyless_problem(table, keys, options_for(config, table).key_columns)
        if problem is not None:
            found[table] = problem
    return found


def check_tables(conn: psycopg.Connection, config: PostgresSourceConfig, tables: list[TableRef]) -> list[Problem]:
    """SELECT privilege and a usable key for every captured table."""
    problems: list[Problem] = []
    for table in tables:
        keys = read_table_keys(conn, table)
        if keys is None:
            problems.append(Problem(COMPONENT, f"table {table} does not exist", "fix source.tables"))
            continue
        if not keys.can_select:
            problems.append(
                Problem(COMPONENT, f"no SELECT privilege on {table}", f"GRANT SELECT ON {table} TO <source role>")
            )
        problem = keyless_problem(table, keys, options_for(config, table).key_columns)
        if problem is not None:
            problems.append(problem)
    return problems
