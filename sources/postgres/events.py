"""pgoutput changes and snapshot rows -> `ChangeEvent`s -> `Record`s or wire-format bytes (docs/event-format.md).

`EventFactory` builds one `TableEvents` per table (snapshot) or per Relation message (stream): the schema
layer's `TableSchemas` (converters built once per column), the mapping from the relation's column order to
the captured columns, and the topic. `TableEvents` holds the one set of rules that makes a change an event
(op, unchanged TOAST, key changes); `ChangeEncoder` is the one place events become bytes, whichever encoder
writes them and whichever process runs it.

Headers on every record: `change_id` and `source_lsn` (`commit_lsn:lsn`, decimal).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import psycopg

from core.errors import SchemaError
from core.records import NEW_KEY_HEADER, OLD_KEY_HEADER, SNAPSHOT_COMPLETE_HEADER, AvroSchema, Record
from schemas.catalog import TableInfo, describe_streamed, describe_tables
from schemas.codegen import Fallback
from schemas.envelope import UNCHANGED_TOAST, TableSchemas, build_table_schemas, envelope_value, source_block
from schemas.fastpath import FALLBACK_ERRORS, EnvelopeWriter
from schemas.serde import Encoder
from schemas.types import SchemaStyle
from sources.postgres.change_id import ChangeIds
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.protocol import Delete, Insert, Relation, Tuple, Update
from sources.postgres.renames import Aliases, Shape, aliases_for, shape_of, shape_of_envelope
from sources.postgres.selection import TableRef, options_for

log = logging.getLogger(__name__)

SchemaIds = Callable[[str, AvroSchema, bool], int]
"""(topic, schema, is_key) -> the registry id of the subject's schema (registered on first use)."""
LatestSchema = Callable[[str], AvroSchema | None]
"""topic -> the latest value schema registered for it (None when there is none)."""
Encoded = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]
"""(key, value, headers) of one record in Confluent wire format, for `KafkaDelivery.produce_raw`."""
_FALLBACK = (Fallback, *FALLBACK_ERRORS)
_WRITER_OPS = frozenset("cudr")


def _key_json(key: dict[str, Any] | None) -> bytes:
    """A key as JSON text for a header (values JSON lacks, like Decimal or bytes, as their text)."""
    return json.dumps(key, default=str, ensure_ascii=False).encode()


class ChangeEvent(NamedTuple):
    """One change of one table, before it takes any form: the envelope, key and headers of its records.

    `ts_ms` is the source block's time (commit time, or the snapshot's start); `snapshot` the source block's
    marker (None when streamed). The envelope's own `ts_ms` is the wall clock when the event is written.
    A NamedTuple, not a frozen dataclass: one is built per change, and a frozen dataclass's `__init__` (one
    `object.__setattr__` per field) costs several times as much. Immutable all the same; `_replace` copies.
    """

    op: str
    key: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    change_id: str
    lsn: int
    commit_lsn: int
    xid: int | None
    ts_ms: int
    snapshot: str | None = None
    unchanged: tuple[str, ...] = ()
    extra_headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        position = f"{self.commit_lsn}:{self.lsn}".encode()
        return (("change_id", self.change_id.encode()), ("source_lsn", position), *self.extra_headers)


class SnapshotRead(NamedTuple):
    """A row a snapshot read, before it has a place in the stream (an incremental chunk's rows get theirs at its
    high watermark): all its event needs but a position."""

    key: dict[str, Any] | None
    after: dict[str, Any]
    key_texts: list[str | None]
    """The key columns' text values in key order (every column's for a keyless table): its change id's name."""


class TableEvents:
    """Builds the events of one table version (the one set of rules) and gives them their forms.

    `changes`, `truncate` and `snapshot_row` (= `snapshot_read` then `snapshot_event`) make `ChangeEvent`s;
    `records` turns them into `Record`s (what transforms and `KafkaDelivery.produce` take); `ChangeEncoder` turns
    them into wire-format bytes.
    """

    __slots__ = (
        "_db", "_debezium", "_full_identity", "_ids", "_index", "_key_schema", "_name", "_schemas",
        "_source_template", "_tombstones", "_topic", "_value_schema", "_writer", "_writer_ids", "columns",
        "key_columns", "schema", "table", "table_name", "topic",
    )  # fmt: skip

    def __init__(
        self,
        schemas: TableSchemas,
        *,
        connector_name: str,
        db: str,
        ids: ChangeIds,
        tombstones: bool,
        relation_columns: Sequence[str] | None = None,
        replica_identity: str = "d",
    ) -> None:
        self._schemas = schemas
        self._debezium = schemas.style == SchemaStyle.DEBEZIUM
        self._topic = schemas.topic
        self.topic = schemas.topic
        self._writer: EnvelopeWriter | None = None
        self._writer_ids: SchemaIds | None = None
        self._key_schema = schemas.key_schema
        self._value_schema = schemas.value_schema
        self._ids = ids
        self._db = db
        self._name = connector_name
        self._tombstones = tombstones
        self._full_identity = replica_identity == "f"
        self.schema = schemas.table.schema
        self.table = schemas.table.name
        self.table_name = f"{self.schema}.{self.table}"
        self.columns = schemas.column_names
        self.key_columns = schemas.key_columns
        self._source_template = source_block(
            name=connector_name, db=db, schema=self.schema, table=self.table, ts_ms=0, style=schemas.style
        )
        self._index: tuple[int, ...] | None = None
        if relation_columns is not None and tuple(relation_columns) != self.columns:
            position = {name: i for i, name in enumerate(relation_columns)}
            missing = [c for c in self.columns if c not in position]
            if missing:
                raise SchemaError(
                    f"{self.table_name}: the replication stream lacks captured columns {', '.join(missing)}",
                    hint="the publication's column list and the config's column selection differ; restart to resync",
                )
            self._index = tuple(position[c] for c in self.columns)

    @property
    def schemas(self) -> TableSchemas:
        return self._schemas

    @property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """The aliases of this version's fields (renamed columns), by column name."""
        return {c.column.name: c.column.aliases for c in self._schemas.codecs if c.column.aliases}

    def _texts(self, values: Tuple) -> Sequence[Any]:
        index = self._index
        return values if index is None else [values[i] for i in index]

    # -- the rules ------------------------------------------------------------------------------------------

    def changes(
        self, message: Insert | Update | Delete, *, lsn: int, commit_lsn: int, ordinal: int, xid: int, commit_ms: int
    ) -> tuple[ChangeEvent, ...]:
        """The events of one streamed change: one, or two for an update that changed the row's key."""
        schemas = self._schemas
        texts = self._texts
        cid = self._ids.streamed(commit_lsn, lsn, ordinal)
        if type(message) is Insert:
            after, _ = schemas.row(texts(message.new))
            return (ChangeEvent("c", schemas.key(after), None, after, cid, lsn, commit_lsn, xid, commit_ms),)
        if type(message) is Update:
            new = message.new
            old = message.old
            if old is not None and not message.old_is_key_only and UNCHANGED_TOAST in new:
                # REPLICA IDENTITY FULL: the old row has the full value of every unchanged TOASTed column.
                new = tuple(o if n is UNCHANGED_TOAST else n for n, o in zip(new, old, strict=True))
            after, unchanged = schemas.row(texts(new))
            key = schemas.key(after)
            if old is None:
                return (ChangeEvent("u", key, None, after, cid, lsn, commit_lsn, xid, commit_ms, None, unchanged),)
            before, _ = schemas.row(texts(old))
            old_key = schemas.key(before)
            if old_key == key:
                return (ChangeEvent("u", key, before, after, cid, lsn, commit_lsn, xid, commit_ms, None, unchanged),)
            # The key changed: like Debezium, a delete of the old key (+ tombstone) and a create of the new one,
            # so keyed consumers (compaction, sinks) drop the old row.
            # Headers as Debezium names them: consumers (our sink among them) recognise the pair.
            delete_id = self._ids.key_change_delete(commit_lsn, lsn, ordinal)
            return (
                ChangeEvent("d", old_key, before, None, delete_id, lsn, commit_lsn, xid, commit_ms,
                            extra_headers=((NEW_KEY_HEADER, _key_json(key)),)),
                ChangeEvent("c", key, None, after, cid, lsn, commit_lsn, xid, commit_ms, None, unchanged,
                            extra_headers=((OLD_KEY_HEADER, _key_json(old_key)),)),
            )  # fmt: skip
        assert isinstance(message, Delete)
        before, _ = schemas.row(texts(message.old))
        return (ChangeEvent("d", schemas.key(before), before, None, cid, lsn, commit_lsn, xid, commit_ms),)

    def truncate(self, *, lsn: int, commit_lsn: int, ordinal: int, xid: int, commit_ms: int) -> ChangeEvent:
        change_id = self._ids.streamed(commit_lsn, lsn, ordinal)
        return ChangeEvent("t", None, None, None, change_id, lsn, commit_lsn, xid, commit_ms)

    def snapshot_row(self, texts: Sequence[str | None], point: int, ts_ms: int, marker: str) -> ChangeEvent:
        """A snapshot read (`op = r`); `texts` in `columns` order, `lsn`/`commit_lsn` = the consistent point."""
        return self.snapshot_event(self.snapshot_read(texts), point, ts_ms, marker)

    def snapshot_read(self, texts: Sequence[str | None]) -> SnapshotRead:
        """A row read by a snapshot (`texts` in `columns` order), converted, not yet placed: no change id, which
        names the position."""
        after, _ = self._schemas.row(texts)
        key_texts = [texts[self.columns.index(c)] for c in self.key_columns] if self.key_columns else list(texts)
        return SnapshotRead(self._schemas.key(after), after, key_texts)

    def snapshot_event(self, read: SnapshotRead, point: int, ts_ms: int, marker: str) -> ChangeEvent:
        """`read` placed at `point` (`lsn` = `commit_lsn`): its `op = r` event, its change id named by point and key."""
        change_id = self._ids.snapshot(point, self.schema, self.table, read.key_texts)
        return ChangeEvent("r", read.key, None, read.after, change_id, point, point, None, ts_ms, marker)

    def snapshot_complete(self, point: int) -> Record:
        """The record that ends this table's snapshot at consistent point `point` (no key, no value).

        Produced after the table's last snapshot row, to every partition of its topic; its id is the same
        whenever the same snapshot is read again. Sinks remove the rows the snapshot did not write.
        """
        change_id = self._ids.snapshot_complete(point, self.schema, self.table)
        marker = json.dumps({"schema": self.schema, "table": self.table}, ensure_ascii=False, separators=(",", ":"))
        headers = (
            ("change_id", change_id.encode()),
            ("source_lsn", f"{point}:{point}".encode()),
            (SNAPSHOT_COMPLETE_HEADER, marker.encode()),
        )
        return Record(self._topic, None, None, None, None, headers)

    # -- the forms ------------------------------------------------------------------------------------------

    def tombstone_after(self, event: ChangeEvent) -> bool:
        """Whether a tombstone (the key, a null value) follows the event's record."""
        return event.op == "d" and self._tombstones and event.key is not None

    def records(self, events: Iterable[ChangeEvent]) -> list[Record]:
        """The events as `Record`s (a delete followed by its tombstone when configured)."""
        out: list[Record] = []
        for event in events:
            source = self._source_template.copy()
            source["ts_ms"] = event.ts_ms
            source["txId"] = event.xid
            source["lsn"] = event.lsn
            source["commit_lsn"] = event.commit_lsn
            source["sequence"] = f'["{event.commit_lsn}","{event.lsn}"]'
            if self._debezium:
                source["snapshot"] = "false" if event.snapshot is None else event.snapshot
                source["ts_us"] = event.ts_ms * 1000
                source["ts_ns"] = event.ts_ms * 1_000_000
            else:
                source["snapshot"] = event.snapshot
            value = envelope_value(
                op=event.op, before=event.before, after=event.after, source=source, ts_ms=int(time.time() * 1000),
                change_id=event.change_id, unchanged_toast=event.unchanged, style=self._schemas.style,
            )  # fmt: skip
            key = event.key
            key_schema = None if key is None else self._key_schema
            headers = event.headers
            out.append(Record(self._topic, key, value, key_schema, self._value_schema, headers))
            if self.tombstone_after(event):
                out.append(Record(self._topic, key, None, key_schema, None, headers))
        return out

    def register(self, schema_ids: SchemaIds) -> None:
        """Register the table's key and value schemas now (registration order is what `newest` reads back)."""
        if self._key_schema is not None:
            schema_ids(self._topic, self._key_schema, True)
        schema_ids(self._topic, self._value_schema, False)

    def envelope_writer(self, schema_ids: SchemaIds) -> EnvelopeWriter | None:
        """The table's generated envelope writer framed with ids from `schema_ids`; None if it does not fit."""
        if self._writer_ids is schema_ids:
            return self._writer
        # Registered in the order the general path registers them (key first).
        key_id = None if self._key_schema is None else schema_ids(self._topic, self._key_schema, True)
        value_id = schema_ids(self._topic, self._value_schema, False)
        self._writer = EnvelopeWriter.build(
            self._schemas, connector_name=self._name, db=self._db, key_schema_id=key_id, value_schema_id=value_id
        )
        self._writer_ids = schema_ids
        return self._writer


class ChangeEncoder:
    """The one place events become wire-format bytes, in the reading process or in a worker process.

    A streamed change or a snapshot read goes through its table's generated envelope writer (schemas/fastpath.py);
    other events, tables and values the writer does not take go through the general encoder (`serde.Encoder`, as
    `serde.RegistrySerializer` frames them). Both give the same bytes: tests/unit/sources/postgres/
    test_change_encoder.py compares them on random rows of every mapped type.
    """

    def __init__(self, schema_ids: SchemaIds, *, envelope_writers: bool = True) -> None:
        self._schema_ids = schema_ids
        self._envelope_writers = envelope_writers
        self._encoder = Encoder()

    def encode(self, table: TableEvents, events: Iterable[ChangeEvent]) -> list[Encoded]:
        out: list[Encoded] = []
        writer = table.envelope_writer(self._schema_ids) if self._envelope_writers else None
        ts_ms = int(time.time() * 1000)
        for event in events:
            if writer is not None and event.op in _WRITER_OPS:
                try:
                    key = writer.key(event.key)
                    value = writer.value(
                        event.op, before=event.before, after=event.after, lsn=event.lsn,
                        commit_lsn=event.commit_lsn, xid=event.xid, commit_ms=event.ts_ms,
                        ts_ms=ts_ms, change_id=event.change_id, unchanged=event.unchanged, snapshot=event.snapshot,
                    )  # fmt: skip
                except _FALLBACK:
                    pass  # a value the generated writer does not take: the general encoder writes it
                else:
                    headers = event.headers
                    out.append((key, value, headers))
                    if table.tombstone_after(event):
                        out.append((key, None, headers))
                    continue
            out += [self._general(record) for record in table.records((event,))]
        return out

    def _general(self, record: Record) -> Encoded:
        topic = record.topic
        key = None if record.key is None or record.key_schema is None else self._encoder.encode(
            self._schema_ids(topic, record.key_schema, True), record.key_schema, record.key
        )
        value = None if record.value is None or record.value_schema is None else self._encoder.encode(
            self._schema_ids(topic, record.value_schema, False), record.value_schema, record.value
        )
        return key, value, record.headers


class EventFactory:
    """Describes tables and builds their `TableEvents`, once per table version.

    A snapshot describes a table from the catalog; the stream from its Relation message (the catalog only
    completes it, `describe_streamed`), so a change is typed as it was written, whatever the table became since.
    With `latest_schema` (the reading process) a Relation is compared with the table's last published shape
    (of this run, or else the registry's latest value schema) to find renamed columns (`renames.py`).
    """

    def __init__(
        self,
        source: PostgresSourceConfig,
        *,
        connector_name: str,
        conn: psycopg.Connection,
        ids: ChangeIds,
        db: str,
        latest_schema: LatestSchema | None = None,
    ) -> None:
        self._source = source
        self._connector_name = connector_name
        self._conn = conn
        self.ids = ids
        self._db = db
        self._latest_schema = latest_schema
        self._shapes: dict[str, Shape] = {}

    def topic(self, table: TableRef) -> str:
        return f"{self._source.topic_prefix}.{table.schema}.{table.table}"

    def _describe(self, table: TableRef) -> TableInfo:
        found = describe_tables(self._conn, [(table.schema, table.table)])
        info = found.get((table.schema, table.table))
        if info is None:
            raise SchemaError(f"table {table} no longer exists", hint="restart to resync the publication")
        return info

    def _build(
        self, table: TableRef, info: TableInfo, only: Sequence[str] | None, relation_columns: Sequence[str] | None
    ) -> TableEvents:
        options = options_for(self._source, table)
        include = options.columns_include
        exclude = options.columns_exclude
        if only is not None:
            # The stream has only the publication's columns (its column list, PostgreSQL 15+).
            include = [c for c in (include if include is not None else only) if c in only]
            exclude = [c for c in exclude if c in only]
        schemas = build_table_schemas(
            info,
            topic=self.topic(table),
            topic_prefix=self._source.topic_prefix,
            decimal_handling=self._source.decimal_handling,
            schema_style=self._source.schema_style,
            skip_unsupported=options.skip_unsupported_columns,
            columns_include=include,
            columns_exclude=exclude,
            key_columns=options.key_columns,
        )
        return TableEvents(
            schemas,
            connector_name=self._connector_name,
            db=self._db,
            ids=self.ids,
            tombstones=self._source.tombstones_on_delete,
            relation_columns=relation_columns,
            replica_identity=info.replica_identity,
        )

    def for_table(self, table: TableRef) -> TableEvents:
        events = self._build(table, self._describe(table), None, None)
        self._shapes[events.topic] = shape_of(events.schemas)
        return events

    def for_relation(self, relation: Relation, aliases: Aliases | None = None) -> TableEvents:
        """The events of the table version `relation` describes.

        `aliases` as found by the reading process (a worker process passes them on); None: find them here.
        """
        table = TableRef(relation.namespace, relation.name)
        names = [c.name for c in relation.columns]
        info = describe_streamed(
            self._conn, schema=relation.namespace, name=relation.name, relation_id=relation.relation_id,
            replica_identity=relation.replica_identity, columns=relation.columns,
        )  # fmt: skip
        events = self._build(table, info, names, names)
        if aliases is None:
            previous = self._previous_shape(events.topic)
            aliases = aliases_for(previous, shape_of(events.schemas))
            known = {f.column for f in previous or ()}
            for column, old in aliases.items():
                if column not in known:
                    log.info("relation %s: column %s renamed from %s (field alias)", table, column, old[0])
        if aliases:
            columns = tuple(replace(c, aliases=aliases.get(c.name, ())) for c in info.columns)
            events = self._build(table, replace(info, columns=columns), names, names)
        self._shapes[events.topic] = shape_of(events.schemas)
        log.info("relation %s: %d columns, key %s", table, len(events.columns), ", ".join(events.key_columns) or "-")
        return events

    def _previous_shape(self, topic: str) -> Shape | None:
        shape = self._shapes.get(topic)
        if shape is None and self._latest_schema is not None:
            latest = self._latest_schema(topic)
            shape = None if latest is None else shape_of_envelope(latest)
        return shape
