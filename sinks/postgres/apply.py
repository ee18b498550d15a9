"""One batch, one destination transaction (steps 2-5 of the commit order in `sinks.postgres.loop`).

Within the transaction: the batch's change ids go into `cdc.applied_changes`, one entry per destination table
(`ON CONFLICT DO NOTHING RETURNING`), and only the (change, table) pairs that came back are applied; per
destination table the changes are split into runs at truncates and schema changes, each run collapsed to the
last change per key, COPYed into a session temp table and merged with `INSERT ... SELECT ... ON CONFLICT ... DO
UPDATE ... WHERE` the stored `(__cdc_commit_lsn, __cdc_lsn)` is lower (deletes likewise); then
`cdc.sink_offsets` advances.

DDL (creating or evolving tables for a run's schema, creating the stage tables) runs in the same transaction, just
before the run that needs it: a schema change commits with the first rows written under it, or not at all (a
kill -9 leaves the table before or after, never between). What a rolled-back transaction created or verified is
forgotten (`_settle`).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from core.errors import is_data_error
from sinks.postgres.changes import UPSERT_OPS, Change, KeyMove, Shape, carry_across_key_changes, collapse
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.copylines import line_tail
from sinks.postgres.snapshots import SnapshotCleanup
from sinks.postgres.tables import (
    CHANGE_ID,
    COMMIT_LSN,
    DELETED,
    DELETED_AT,
    LSN,
    OP,
    TS_MS,
    TableManager,
    TableName,
    TargetTable,
    destination_of,
)
from sinks.postgres.types import ValueConverter

log = logging.getLogger(__name__)

_STAGE_OP = "__cdc_stage_op"

_Fresh = dict[int, set[int]] | None
"""Fresh (change id, table) pairs of a batch: `UUID.int`s per destination table oid; None when all are fresh."""
_STAGE_TOAST = "__cdc_stage_toast"


@dataclass(slots=True)
class ApplyResult:
    applied: Counter[tuple[str, str]] = field(default_factory=Counter)  # (table, op) -> changes applied
    duplicates: int = 0
    stale: int = 0


@dataclass(slots=True)
class _TableRun:
    """Consecutive changes of one destination table with one shape (a run ends at a truncate or a schema change),
    merged together in one statement per kind. Its target is resolved (the table evolved for its shape) just
    before it is applied, so a schema change takes effect between the runs written before and after it."""

    table: TableName
    oid: int | None
    """The table's oid (its identity in the ledger); None when it does not exist (nothing to apply)."""
    shape: Shape | None
    """None for a truncate alone: it needs only the table."""
    changes: list[Change]
    truncate: Change | None = None
    target: TargetTable | None = None


def copy_values(
    change: Change,
    op: str,
    toast: int,
    *,
    names: Sequence[str],
    whole: bool,
    converted: Sequence[tuple[int, ValueConverter]],
    position: Mapping[str, int],
) -> list[Any]:
    """The values `Applier._copy` writes for `change`: the table's columns (`names`, converted), then the stage's
    bookkeeping columns. `whole`: the change's shape has exactly `names`, in order."""
    row = change.row
    values: list[Any]
    if row is not None:
        values = list(row.values()) if whole and len(row) == len(names) else [row.get(n) for n in names]
    else:
        image = change.key or {}
        values = [image.get(name) for name in names]
    for i, convert in converted:
        value = values[i]
        if value is not None:
            values[i] = convert(value)
    for name in change.unchanged_toast:
        if name in position:
            values[position[name]] = None  # never written for this change (see _merge)
    values += [change.commit_lsn, change.lsn, change.change_id, op, toast, change.ts_ms]
    return values


class Applier:
    """Applies batches of changes; holds per-session state (stage tables), so `reset` after a reconnect."""

    def __init__(self, config: PostgresSinkConfig, group_id: str, tables: TableManager) -> None:
        self._config = config
        self._group_id = group_id
        self._tables = tables
        self._stages: dict[TargetTable, sql.Identifier] = {}
        self._new_stages: list[TargetTable] = []  # created in the current transaction
        self._stage_numbers = itertools.count(1)
        self._dirty: set[TargetTable] = set()  # whose stage holds rows in the current transaction
        self._snapshots = SnapshotCleanup(config)

    def reset(self) -> None:
        """Forget session state: call when the connection was replaced."""
        self._stages.clear()
        self._new_stages.clear()
        self._tables.forget()

    def _settle(self, committed: bool) -> None:
        """The batch's transaction ended: what was created or verified in it is kept only if it committed."""
        if not committed:
            for target in self._new_stages:
                self._stages.pop(target, None)
        self._new_stages.clear()
        self._tables.settle(committed)

    # -- preparation (inside the batch's transaction) -------------------------------------------------

    def prepare(self, conn: psycopg.Connection[Any], changes: Sequence[Change]) -> list[_TableRun]:
        """Split changes into runs per destination table and shape; find (or create) each table."""
        runs: list[_TableRun] = []
        by_table: dict[TableName, list[Change]] = {}
        names: dict[tuple[str, str, str], TableName] = {}
        for change in changes:
            source = (change.topic, change.source_schema, change.source_table)
            table = names.get(source)
            if table is None:
                table = names[source] = destination_of(change, self._config)
                self._snapshots.saw(table, source)
            if change.snapshot_complete and not self._snapshots.applies(table):
                continue  # recorded in the ledger by `apply`, nothing to do to the table
            by_table.setdefault(table, []).append(change)
        for table in sorted(by_table):
            oid = self._tables.oid(conn, table)
            if oid is None:
                creating = next(
                    (c for c in by_table[table] if not c.shape.key_only and (c.op != "t" or self._appends)), None
                )
                if creating is not None:
                    created = self._tables.target(conn, table, creating.shape, self._position(table, creating))
                    oid = created.oid if created is not None else None
            current: _TableRun | None = None
            for change in by_table[table]:
                if change.op == "t" and not self._appends:
                    # A truncate has no key (so no usable shape): it needs only the table.
                    run = current or _TableRun(table, oid, None, [])
                    run.truncate = change
                    runs.append(run)
                    current = None
                    continue
                shape = change.shape
                if (
                    current is not None
                    and current.shape is not None
                    and (
                        current.shape is shape
                        or current.shape == shape
                        or (shape.key_only and current.shape.key == shape.key)
                    )
                ):
                    # A delete from a tombstone joins the run when its key fits: the run's table takes it by key
                    # as it is, and it keeps a key change's delete and create together (`carry_across_key_changes`).
                    current.changes.append(change)
                    continue
                if current is not None:
                    runs.append(current)
                current = _TableRun(table, oid, shape, [change])
            if current is not None:
                runs.append(current)
        return runs

    @property
    def _appends(self) -> bool:
        return self._config.mode == "append"

    def _position(self, table: TableName, change: Change) -> tuple[int, int] | None:
        # Positions of different sources do not compare: no "older schema" check for a table several feed.
        return None if self._snapshots.merged(table) else change.position

    def _resolve(self, conn: psycopg.Connection[Any], run: _TableRun) -> TargetTable | None:
        """The run's target: its table evolved for its shape (DDL in the current transaction), with a stage."""
        if run.target is not None or run.oid is None:
            return run.target
        if run.shape is None:
            run.target = self._tables.truncate_target(conn, run.table)
            return run.target
        first = run.changes[0] if run.changes else run.truncate
        assert first is not None
        run.target = self._tables.target(conn, run.table, run.shape, self._position(run.table, first))
        if run.target is not None:
            self._stage(conn, run.target)
        return run.target

    def _stage(self, conn: psycopg.Connection[Any], target: TargetTable) -> sql.Identifier:
        stage = self._stages.get(target)
        if stage is not None:
            return stage
        stage = sql.Identifier(f"_cdc_stage_{next(self._stage_numbers)}")
        # CREATE ... AS SELECT copies the destination's exact column types without its constraints, so
        # staged rows may hold NULL in columns a merge will not write (unchanged TOAST).
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {stage} ON COMMIT DELETE ROWS AS SELECT {cols}"
                "NULL::bigint AS {cl}, NULL::bigint AS {l}, NULL::uuid AS {cid}, NULL::text AS {op}, "
                "NULL::int AS {toast}, NULL::bigint AS {ts} FROM {table} WITH NO DATA"
            ).format(
                stage=stage,
                cols=sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier(c)) for c in target.columns),
                cl=sql.Identifier(COMMIT_LSN),
                l=sql.Identifier(LSN),
                cid=sql.Identifier(CHANGE_ID),
                op=sql.Identifier(_STAGE_OP),
                toast=sql.Identifier(_STAGE_TOAST),
                ts=sql.Identifier(TS_MS),
                table=target.name.ident,
            )
        )
        self._stages[target] = stage
        self._new_stages.append(target)
        return stage

    # -- the transaction ------------------------------------------------------------------------------

    def apply(
        self,
        conn: psycopg.Connection[Any],
        changes: Sequence[Change],
        offsets: Mapping[tuple[str, int], int],
    ) -> ApplyResult:
        """Apply `changes` and advance `offsets` in one transaction (committed on return), DDL included."""
        result = ApplyResult()
        self._dirty.clear()  # stages are empty when a transaction starts (ON COMMIT DELETE ROWS, or rollback)
        committed = False
        try:
            with conn.transaction():
                runs = self.prepare(conn, changes)
                fresh, result.duplicates = self._ledger(conn, runs)
                for run in runs:
                    self._apply_run(conn, run, fresh, result)
                self._advance(conn, offsets)
            committed = True
        finally:
            self._settle(committed)
        return result

    def isolate(self, conn: psycopg.Connection[Any], changes: Sequence[Change]) -> list[tuple[Change, Exception]]:
        """The changes that fail on their own (data or constraint errors), found one savepoint per change.

        Everything is rolled back: the caller dead-letters the failures and applies the rest normally.
        """
        failures: list[tuple[Change, Exception]] = []
        self._dirty.clear()
        try:
            with conn.transaction(force_rollback=True):
                for run in self.prepare(conn, changes):
                    target = self._resolve(conn, run)  # DDL outside the per-change savepoints
                    singles = [_TableRun(run.table, run.oid, run.shape, [c], None, target) for c in run.changes]
                    if run.truncate is not None:
                        singles.append(_TableRun(run.table, run.oid, run.shape, [], run.truncate, target))
                    for single in singles:
                        change = single.truncate or single.changes[0]
                        try:
                            with conn.transaction():
                                self._apply_run(conn, single, None, ApplyResult())
                        except psycopg.Error as exc:
                            if not is_data_error(exc):
                                raise
                            failures.append((change, exc))
        finally:
            self._settle(False)
        return failures

    def _ledger(self, conn: psycopg.Connection[Any], runs: Sequence[_TableRun]) -> tuple[_Fresh, int]:
        """Step 2: record each change id once per destination table it is applied to.

        Returns the (change id, table) pairs not recorded before, as `UUID.int` per table oid, and how many of
        the batch's changes were duplicates. None instead of the pairs means every change of the batch is fresh
        and none repeats within it (the common case: no set to build or probe per change). A change whose
        table does not exist (a delete for a table never created) takes no effect, so it is not recorded.
        """
        # Keyed by `UUID.int`: hashing an int is a C call, hashing a UUID a Python method (10x dearer).
        by_table: dict[int, dict[int, Change]] = {}
        total = 0
        for run in runs:
            if run.oid is None:
                continue
            first = by_table.setdefault(run.oid, {})
            for change in run.changes:
                first.setdefault(change.change_id.int, change)
            total += len(run.changes)
            if run.truncate is not None:
                first.setdefault(run.truncate.change_id.int, run.truncate)
                total += 1
        entries = sum(len(first) for first in by_table.values())
        if not entries:
            return {}, total
        unique = [change for first in by_table.values() for change in first.values()]
        topic, partition = unique[0].topic, unique[0].partition
        # ORDER BY: concurrent sinks take the ledger's index locks in one order, so they never deadlock; sorted
        # keys also visit the index's leaf pages in order.
        if len(by_table) == 1 and all(c.partition == partition and c.topic == topic for c in unique):
            # One table and one partition (the usual batch of a partitioned consumer): no per-change table,
            # topic and partition arrays to build and send.
            cur = conn.execute(
                """INSERT INTO cdc.applied_changes (change_id, destination, topic, partition, "offset")
                   SELECT i, %b::oid, %b::text, %b::int, o FROM unnest(%b::uuid[], %b::bigint[]) AS x(i, o)
                   ORDER BY 1 ON CONFLICT DO NOTHING RETURNING change_id, destination""",
                (next(iter(by_table)), topic, partition, [c.change_id for c in unique], [c.offset for c in unique]),
                binary=True,
            )
        else:
            cur = conn.execute(
                """INSERT INTO cdc.applied_changes (change_id, destination, topic, partition, "offset")
                   SELECT * FROM unnest(%b::uuid[], %b::oid[], %b::text[], %b::int[], %b::bigint[]) ORDER BY 1, 2
                   ON CONFLICT DO NOTHING RETURNING change_id, destination""",
                (
                    [c.change_id for c in unique],
                    [oid for oid, first in by_table.items() for _ in first],
                    [c.topic for c in unique],
                    [c.partition for c in unique],
                    [c.offset for c in unique],
                ),
                binary=True,
            )
        if cur.rowcount == entries:
            # All inserted: the returned rows need not be read (psycopg parses rows only when fetched).
            if entries == total:
                return None, 0
            return {oid: set(first) for oid, first in by_table.items()}, total - entries
        fresh: dict[int, set[int]] = {}
        for change_id, oid in cur.fetchall():
            fresh.setdefault(int(oid), set()).add(change_id.int)
        return fresh, total - cur.rowcount

    def _advance(self, conn: psycopg.Connection[Any], offsets: Mapping[tuple[str, int], int]) -> None:
        """Step 4: the next offset per partition; never moves back (a zombie consumer cannot rewind it)."""
        if not offsets:
            return
        items = sorted(offsets.items())
        conn.execute(
            """INSERT INTO cdc.sink_offsets AS o (group_id, topic, partition, next_offset, updated_at)
               SELECT %s, t, p, n, now() FROM unnest(%b::text[], %b::int[], %b::bigint[]) AS x(t, p, n)
               ON CONFLICT (group_id, topic, partition)
               DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
               WHERE o.next_offset < EXCLUDED.next_offset""",
            (self._group_id, [k[0] for k, _ in items], [k[1] for k, _ in items], [v for _, v in items]),
        )

    def _apply_run(self, conn: psycopg.Connection[Any], run: _TableRun, fresh: _Fresh, result: ApplyResult) -> None:
        """Step 3, for one run of one table; `fresh` as `_ledger` returns it (None: all fresh, none repeated).

        Each fresh id is taken once (the first occurrence in the batch), so an id repeated within a batch, even
        across runs of one table, is applied once.
        """
        target = self._resolve(conn, run)
        if target is None:
            return  # no table: a delete or truncate of rows that were never written
        truncate = run.truncate
        if fresh is None:
            changes = run.changes
        else:
            ids = fresh.get(target.oid) or set()
            changes = []
            for change in run.changes:
                cid = change.change_id.int
                if cid in ids:
                    ids.discard(cid)
                    changes.append(change)
            if truncate is not None:
                if truncate.change_id.int in ids:
                    ids.discard(truncate.change_id.int)
                else:
                    truncate = None
        if changes:
            if target.append:
                self._append(conn, target, changes, result)
            else:
                carried, moves = carry_across_key_changes(changes)
                self._merge(conn, target, collapse(carried), result, moves)
            name = str(run.table)
            for op, count in Counter(change.op for change in changes).items():
                result.applied[(name, op)] += count
        if truncate is not None:
            self._truncate(conn, target, truncate, result)
            result.applied[(str(run.table), "t")] += 1

    def _copy(
        self,
        conn: psycopg.Connection[Any],
        target: TargetTable,
        rows: Sequence[tuple[Change, str, int]],
    ) -> sql.Identifier:
        stage = self._stages[target]
        columns = [*target.columns, COMMIT_LSN, LSN, CHANGE_ID, _STAGE_OP, _STAGE_TOAST, TS_MS]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, sql.SQL(", ").join(map(sql.Identifier, columns)))
        # The stage empties only at commit, and one transaction may merge several runs into the same
        # table: rows staged by an earlier run must not be merged again (that would resurrect a row a
        # later delete removed).
        if target in self._dirty:
            conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        self._dirty.add(target)
        names = target.columns
        converted = [(i, convert) for i, convert in enumerate(target.converters) if convert is not None]
        position = {name: i for i, name in enumerate(names)}
        # Rows whose shape has exactly the written columns, in order, are taken as they are (no per-name lookup),
        # and so are rows read natively as COPY lines (copylines.py), when psycopg would encode text as UTF-8.
        same: dict[int, bool] = {}
        lines = conn.info.encoding == "utf-8"
        pending: list[bytes] = []
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for change, op, toast in rows:
                shape = change.shape
                whole = same.get(id(shape))
                if whole is None:
                    whole = same[id(shape)] = shape.names == names
                line = change.line
                if line is not None and whole and lines and not change.unchanged_toast:
                    pending.append(line)
                    pending.append(line_tail(change, op, toast))
                    continue
                if pending:
                    copy.write(b"".join(pending))
                    pending.clear()
                copy.write_row(
                    copy_values(change, op, toast, names=names, whole=whole, converted=converted, position=position)
                )
            if pending:
                copy.write(b"".join(pending))
        return stage

    def _merge(
        self,
        conn: psycopg.Connection[Any],
        target: TargetTable,
        changes: Sequence[Change],
        result: ApplyResult,
        moves: Mapping[tuple[Any, ...], KeyMove] | None = None,
    ) -> None:
        groups: dict[frozenset[str], int] = {frozenset(): 0}
        rows: list[tuple[Change, str, int]] = []
        fills: list[tuple[Change, KeyMove, frozenset[str], int]] = []
        deletes = 0
        for change in changes:
            if change.op in UPSERT_OPS:
                if change.unchanged_toast:
                    unchanged = frozenset(change.unchanged_toast.intersection(target.columns))
                    group = groups.setdefault(unchanged, len(groups))
                    move = moves.get(change.key_tuple) if moves else None
                    if move is not None and unchanged & move.columns:
                        # Written as unchanged unless the old key's row is found (then as known, see _fill).
                        known = groups.setdefault(unchanged - move.columns, len(groups))
                        fills.append((change, move, unchanged & move.columns, known))
                else:
                    group = 0
                rows.append((change, "u", group))
            else:
                rows.append((change, "d", 0))
                deletes += 1
        stage = self._copy(conn, target, rows)
        if fills:
            self._fill(conn, target, stage, fills)
        upserts = len(rows) - deletes
        table = target.name.ident
        key = sql.SQL(", ").join(map(sql.Identifier, target.key))
        guard = sql.SQL("({t}.{cl}, {t}.{l}) < ({s}.{cl}, {s}.{l})")
        cl, lsn, cid = sql.Identifier(COMMIT_LSN), sql.Identifier(LSN), sql.Identifier(CHANGE_ID)
        if upserts:
            written = 0
            used = ({t for _, op, t in rows if op == "u"} | {f[3] for f in fills}) if len(groups) > 1 else {0}
            for unchanged, group in groups.items():
                if group not in used:
                    continue  # every change of that TOAST group collapsed into a later one
                columns = list(target.columns)
                book = [COMMIT_LSN, LSN, CHANGE_ID]
                book_values: list[sql.Composable] = [sql.SQL("s.{}").format(sql.Identifier(n)) for n in book]
                if target.soft:
                    book += [DELETED, DELETED_AT]
                    book_values += [sql.SQL("false"), sql.SQL("NULL")]
                updated = [c for c in columns if c not in target.key and c not in unchanged] + book
                statement = sql.SQL(
                    "INSERT INTO {table} AS t ({cols}) SELECT {values} FROM {stage} s "
                    "WHERE s.{op} = 'u' AND s.{toast} = {group} ORDER BY {skey} "
                    "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {guard}"
                ).format(
                    table=table,
                    cols=sql.SQL(", ").join(map(sql.Identifier, [*columns, *book])),
                    values=sql.SQL(", ").join(
                        [*(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns), *book_values]
                    ),
                    stage=stage,
                    op=sql.Identifier(_STAGE_OP),
                    toast=sql.Identifier(_STAGE_TOAST),
                    group=sql.Literal(group),
                    skey=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in target.key),
                    key=key,
                    sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updated),
                    guard=guard.format(t=sql.Identifier("t"), s=sql.Identifier("excluded"), cl=cl, l=lsn),
                )
                written += conn.execute(statement).rowcount
            result.stale += upserts - written
        if deletes:
            match = sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in target.key)
            if target.soft:
                statement = sql.SQL(
                    "INSERT INTO {table} AS t ({cols}, {cl}, {l}, {cid}, {deleted}, {deleted_at}) "
                    "SELECT {values}, s.{cl}, s.{l}, s.{cid}, true, now() FROM {stage} s WHERE s.{op} = 'd' "
                    "ORDER BY {skey} ON CONFLICT ({key}) DO UPDATE SET {cl} = EXCLUDED.{cl}, {l} = EXCLUDED.{l}, "
                    "{cid} = EXCLUDED.{cid}, {deleted} = true, {deleted_at} = EXCLUDED.{deleted_at} WHERE {guard}"
                ).format(
                    table=table,
                    cols=sql.SQL(", ").join(map(sql.Identifier, target.columns)),
                    values=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in target.columns),
                    stage=stage,
                    op=sql.Identifier(_STAGE_OP),
                    skey=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in target.key),
                    key=key,
                    cl=cl,
                    l=lsn,
                    cid=cid,
                    deleted=sql.Identifier(DELETED),
                    deleted_at=sql.Identifier(DELETED_AT),
                    guard=guard.format(t=sql.Identifier("t"), s=sql.Identifier("excluded"), cl=cl, l=lsn),
                )
            else:
                statement = sql.SQL(
                    "DELETE FROM {table} AS t USING {stage} s WHERE s.{op} = 'd' AND {match} AND {guard}"
                ).format(
                    table=table,
                    stage=stage,
                    op=sql.Identifier(_STAGE_OP),
                    match=match,
                    guard=guard.format(t=sql.Identifier("t"), s=sql.Identifier("s"), cl=cl, l=lsn),
                )
            result.stale += deletes - conn.execute(statement).rowcount

    def _fill(
        self,
        conn: psycopg.Connection[Any],
        target: TargetTable,
        stage: sql.Identifier,
        fills: Sequence[tuple[Change, KeyMove, frozenset[str], int]],
    ) -> None:
        """Unchanged TOASTed values of key-changing updates, copied into the stage from the old key's row.

        Runs after the COPY and before any merge of this run, so the old row is as it was before the batch (its
        delete comes after the upserts). A staged row whose old row is found moves to the TOAST group that writes
        those columns; one whose old row is absent (the sink started later) keeps them unwritten.
        """
        converters = dict(zip(target.columns, target.converters, strict=True))
        for change, move, columns, known in fills:
            old_key = []
            for name in target.key:
                value = move.old_key.get(name)
                convert = converters.get(name)
                old_key.append(convert(value) if convert is not None and value is not None else value)
            ordered = sorted(columns)
            conn.execute(
                sql.SQL(
                    "UPDATE {stage} s SET {sets}, {toast} = {known} FROM {table} o "
                    "WHERE s.{cid} = %s AND s.{op} = 'u' AND {match}"
                ).format(
                    stage=stage,
                    sets=sql.SQL(", ").join(sql.SQL("{c} = o.{c}").format(c=sql.Identifier(c)) for c in ordered),
                    toast=sql.Identifier(_STAGE_TOAST),
                    known=sql.Literal(known),
                    table=target.name.ident,
                    cid=sql.Identifier(CHANGE_ID),
                    op=sql.Identifier(_STAGE_OP),
                    match=sql.SQL(" AND ").join(sql.SQL("o.{} = %s").format(sql.Identifier(k)) for k in target.key),
                ),
                [change.change_id, *old_key],
            )

    def _append(
        self, conn: psycopg.Connection[Any], target: TargetTable, changes: Sequence[Change], result: ApplyResult
    ) -> None:
        stage = self._copy(conn, target, [(c, c.op, 0) for c in changes])
        columns = list(target.columns)
        conn.execute(
            sql.SQL(
                "INSERT INTO {table} ({cols}, {op}, {cid}, {cl}, {l}, {ts}) "
                "SELECT {values}, s.{sop}, s.{cid}, s.{cl}, s.{l}, s.{ts} FROM {stage} s "
                "ON CONFLICT ({cid}) DO NOTHING"
            ).format(
                table=target.name.ident,
                cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                values=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns),
                op=sql.Identifier(OP),
                sop=sql.Identifier(_STAGE_OP),
                cid=sql.Identifier(CHANGE_ID),
                cl=sql.Identifier(COMMIT_LSN),
                l=sql.Identifier(LSN),
                ts=sql.Identifier(TS_MS),
                stage=stage,
            )
        )

    def _truncate(
        self, conn: psycopg.Connection[Any], target: TargetTable, change: Change, result: ApplyResult
    ) -> None:
        # A guarded DELETE rather than TRUNCATE: a replayed old truncate must not remove rows written after it.
        cl, lsn = sql.Identifier(COMMIT_LSN), sql.Identifier(LSN)
        if target.soft:
            conn.execute(
                sql.SQL(
                    "UPDATE {table} SET {deleted} = true, {deleted_at} = now(), {cl} = %s, {l} = %s, {cid} = %s "
                    "WHERE ({cl}, {l}) < (%s, %s)"
                ).format(
                    table=target.name.ident,
                    deleted=sql.Identifier(DELETED),
                    deleted_at=sql.Identifier(DELETED_AT),
                    cl=cl,
                    l=lsn,
                    cid=sql.Identifier(CHANGE_ID),
                ),
                (change.commit_lsn, change.lsn, change.change_id, change.commit_lsn, change.lsn),
            )
        else:
            conn.execute(
                sql.SQL("DELETE FROM {table} WHERE ({cl}, {l}) < (%s, %s)").format(
                    table=target.name.ident, cl=cl, l=lsn
                ),
                (change.commit_lsn, change.lsn),
            )
