"""pgoutput changes and snapshot rows -> `Record`s (Debezium-compatible envelopes, see docs/event-format.md).

`EventFactory` builds one `TableEvents` per table (snapshot) or per Relation message (stream): the schema
layer's `TableSchemas` (converters built once per column), the mapping from the relation's column order to
the captured columns, and the topic. Everything per event is then plain data shuffling.

Headers on every record: `change_id` and `source_lsn` (`commit_lsn:lsn`, decimal).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from connector.config import ConnectorConfig
from core.errors import SchemaError
from core.records import NEW_KEY_HEADER, OLD_KEY_HEADER, SNAPSHOT_COMPLETE_HEADER, AvroSchema, Record
from schemas.catalog import TableInfo, describe_tables
from schemas.codegen import Fallback
from schemas.envelope import UNCHANGED_TOAST, TableSchemas, build_table_schemas, source_block
from schemas.fastpath import FALLBACK_ERRORS, EnvelopeWriter
from schemas.registry import SchemaRegistryConfig
from sources.postgres.change_id import ChangeIds
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.protocol import Delete, Insert, Relation, Tuple, Update
from sources.postgres.selection import TableRef, options_for

log = logging.getLogger(__name__)

SchemaIds = Callable[[str, AvroSchema, bool], int]
"""(topic, schema, is_key) -> the registry id of the subject's schema (registered on first use)."""
Encoded = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
"""(key, value, headers) of one record in Confluent wire format, for `KafkaDelivery.produce_raw`."""
_FALLBACK = (Fallback, *FALLBACK_ERRORS)


def _key_json(key: dict[str, Any] | None) -> bytes:
    """A key as JSON text for a header (values JSON lacks, like Decimal or bytes, as their text)."""
    return json.dumps(key, default=str, ensure_ascii=False).encode()


class RegistrySerializer:
    """Confluent wire format with schemas registered once per (subject, schema); `close()` ends its HTTP client."""

    def __init__(self, config: SchemaRegistryConfig) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        from schemas.registry import SchemaRegistry
        from schemas.serde import Encoder

        self._client = SchemaRegistryClient(config.client_settings())
        self._registry = SchemaRegistry(config, client=self._client)
        self._encoder = Encoder()
        self._ids: dict[tuple[str, bool, str], int] = {}

    def __call__(self, topic: str, schema: AvroSchema, value: Any, is_key: bool) -> bytes:
        cache_key = (topic, is_key, schema.text)
        schema_id = self._ids.get(cache_key)
        if schema_id is None:
            schema_id = self._registry.register(f"{topic}-{'key' if is_key else 'value'}", schema)
            self._ids[cache_key] = schema_id
        return self._encoder.encode(schema_id, schema, value)

    def schema_id(self, topic: str, schema: AvroSchema, is_key: bool) -> int:
        """The id `__call__` frames values with (registering the schema on first use)."""
        cache_key = (topic, is_key, schema.text)
        schema_id = self._ids.get(cache_key)
        if schema_id is None:
            schema_id = self._registry.register(f"{topic}-{'key' if is_key else 'value'}", schema)
            self._ids[cache_key] = schema_id
        return schema_id

    def close(self) -> None:
        self._client.close()


class TableEvents:
    """Builds the records of one table version."""

    __slots__ = (
        "_db", "_full_identity", "_ids", "_index", "_key_schema", "_name", "_schema_ids", "_schemas",
        "_source_template", "_tombstones", "_topic", "_value_schema", "_writer", "columns", "key_columns", "last_op",
        "schema", "table", "table_name", "topic",
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
        self._topic = schemas.topic
        self.topic = schemas.topic
        self._schema_ids: SchemaIds | None = None
        self._writer: EnvelopeWriter | None = None
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
        self.last_op = ""
        self._source_template = source_block(name=connector_name, db=db, schema=self.schema, table=self.table, ts_ms=0)
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

    def _texts(self, values: Tuple) -> Sequence[Any]:
        index = self._index
        return values if index is None else [values[i] for i in index]

    def _source(self, lsn: int, commit_lsn: int, xid: int | None, ts_ms: int, snapshot: str | None) -> dict[str, Any]:
        """`schemas.envelope.source_block(...)` for this table, filled in from a template (once per event)."""
        source = self._source_template.copy()
        source["ts_ms"] = ts_ms
        source["snapshot"] = snapshot
        source["txId"] = xid
        source["lsn"] = lsn
        source["commit_lsn"] = commit_lsn
        source["sequence"] = f'["{commit_lsn}","{lsn}"]'
        return source

    def streamed(
        self, message: Insert | Update | Delete, *, lsn: int, commit_lsn: int, ordinal: int, xid: int, commit_ms: int
    ) -> list[Record]:
        schemas = self._schemas
        texts = self._texts
        cid = self._ids.streamed(commit_lsn, lsn, ordinal)
        src = self._source(lsn, commit_lsn, xid, commit_ms, None)
        if type(message) is Insert:
            after, _ = schemas.row(texts(message.new))
            return self._records("c", after=after, key=schemas.key(after), change_id=cid, source=src)
        if type(message) is Update:
            new = message.new
            old = message.old
            if old is not None and not message.old_is_key_only and UNCHANGED_TOAST in new:
                # REPLICA IDENTITY FULL: the old row has the full value of every unchanged TOASTed column.
                new = tuple(o if n is UNCHANGED_TOAST else n for n, o in zip(new, old, strict=True))
            after, unchanged = schemas.row(texts(new))
            key = schemas.key(after)
            if old is None:
                return self._records("u", after=after, key=key, unchanged=unchanged, change_id=cid, source=src)
            before, _ = schemas.row(texts(old))
            old_key = schemas.key(before)
            if old_key == key:
                return self._records(
                    "u", before=before, after=after, key=key, unchanged=unchanged, change_id=cid, source=src
                )
            # The key changed: like Debezium, a delete of the old key (+ tombstone) and a create of the new one,
            # so keyed consumers (compaction, sinks) drop the old row.
            # Headers as Debezium names them: consumers (our sink among them) recognise the pair.
            delete_id = self._ids.key_change_delete(commit_lsn, lsn, ordinal)
            return [
                *self._records("d", before=before, key=old_key, change_id=delete_id, source=src,
                               extra_headers=((NEW_KEY_HEADER, _key_json(key)),)),
                *self._records("c", after=after, key=key, unchanged=unchanged, change_id=cid, source=src.copy(),
                               extra_headers=((OLD_KEY_HEADER, _key_json(old_key)),)),
            ]  # fmt: skip
        assert isinstance(message, Delete)
        before, _ = schemas.row(texts(message.old))
        return self._records("d", before=before, key=schemas.key(before), change_id=cid, source=src)

    def enable_fastpath(self, schema_ids: SchemaIds) -> None:
        """Let `streamed_encoded` write envelopes straight to bytes, framed with the ids `schema_ids` gives."""
        self._schema_ids = schema_ids
        self._writer = None

    def _build_writer(self) -> EnvelopeWriter | None:
        schema_ids = self._schema_ids
        assert schema_ids is not None
        # Registered in the order the ordinary path registers them (key first), on the first event.
        key_id = None if self._key_schema is None else schema_ids(self._topic, self._key_schema, True)
        value_id = schema_ids(self._topic, self._value_schema, False)
        writer = EnvelopeWriter.build(
            self._schemas, connector_name=self._name, db=self._db, key_schema_id=key_id, value_schema_id=value_id
        )
        if writer is None:
            self._schema_ids = None  # not supported for this table: always the ordinary path
            return None
        self._writer = writer
        return writer

    def streamed_encoded(
        self, message: Insert | Update | Delete, *, lsn: int, commit_lsn: int, ordinal: int, xid: int, commit_ms: int
    ) -> list[Encoded] | None:
        """`streamed(...)` encoded to wire format (the same bytes), or None: use `streamed` for this change.

        None when `enable_fastpath` was not called, for an update that changes the key, and for values the
        generated writers do not take (the ordinary path lets fastavro write them).
        """
        writer = self._writer
        if writer is None:
            if self._schema_ids is None:
                return None
            writer = self._build_writer()
            if writer is None:
                return None
        schemas = self._schemas
        index = self._index
        before: dict[str, Any] | None = None
        after: dict[str, Any] | None = None
        unchanged: Sequence[str] = ()
        if type(message) is Insert:
            op = "c"
            new = message.new
            after, _ = schemas.row(new if index is None else [new[i] for i in index])
            key = schemas.key(after)
        elif type(message) is Update:
            op = "u"
            new = message.new
            old = message.old
            if old is not None and not message.old_is_key_only and UNCHANGED_TOAST in new:
                new = tuple(o if n is UNCHANGED_TOAST else n for n, o in zip(new, old, strict=True))
            after, unchanged = schemas.row(new if index is None else [new[i] for i in index])
            key = schemas.key(after)
            if old is not None:
                before, _ = schemas.row(old if index is None else [old[i] for i in index])
                if schemas.key(before) != key:
                    return None  # a key change: delete + create, built by `streamed`
        else:
            assert type(message) is Delete
            op = "d"
            old = message.old
            before, _ = schemas.row(old if index is None else [old[i] for i in index])
            key = schemas.key(before)
        change_id = self._ids.streamed(commit_lsn, lsn, ordinal)
        try:
            key_bytes = writer.key(key)
            value = writer.value(
                op, before=before, after=after, lsn=lsn, commit_lsn=commit_lsn, xid=xid, commit_ms=commit_ms,
                ts_ms=int(time.time() * 1000), change_id=change_id, unchanged=unchanged,
            )  # fmt: skip
        except _FALLBACK:
            return None
        self.last_op = op
        headers = [("change_id", change_id.encode()), ("source_lsn", f"{commit_lsn}:{lsn}".encode())]
        if op == "d" and self._tombstones and key is not None:
            return [(key_bytes, value, headers), (key_bytes, None, headers)]
        return [(key_bytes, value, headers)]

    def _records(
        self,
        op: str,
        *,
        key: dict[str, Any] | None,
        change_id: str,
        source: dict[str, Any],
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        unchanged: Sequence[str] = (),
        extra_headers: tuple[tuple[str, bytes], ...] = (),
    ) -> list[Record]:
        self.last_op = op
        value: dict[str, Any] = {
            "before": before,
            "after": after,
            "source": source,
            "op": op,
            "ts_ms": int(time.time() * 1000),
            "change_id": change_id,
            "unchanged_toast": list(unchanged),
        }
        position = f"{source['commit_lsn']}:{source['lsn']}"
        headers = (("change_id", change_id.encode()), ("source_lsn", position.encode()), *extra_headers)
        record = Record(self._topic, key, value, self._key_schema, self._value_schema, headers)
        if op == "d" and self._tombstones and key is not None:
            return [record, Record(self._topic, key, None, self._key_schema, None, headers)]
        return [record]

    def truncate(self, *, lsn: int, commit_lsn: int, ordinal: int, xid: int, commit_ms: int) -> list[Record]:
        change_id = self._ids.streamed(commit_lsn, lsn, ordinal)
        self.last_op = "t"
        value = self._schemas.envelope(
            op="t", before=None, after=None, source=self._source(lsn, commit_lsn, xid, commit_ms, None),
            ts_ms=int(time.time() * 1000), change_id=change_id,
        )  # fmt: skip
        headers = (("change_id", change_id.encode()), ("source_lsn", f"{commit_lsn}:{lsn}".encode()))
        return [Record(self._topic, None, value, None, self._value_schema, headers)]

    def snapshot_row(self, texts: Sequence[str | None], point: int, ts_ms: int, marker: str) -> list[Record]:
        """A snapshot read (`op = r`); `texts` in `columns` order, `lsn`/`commit_lsn` = the consistent point."""
        schemas = self._schemas
        after, _ = schemas.row(texts)
        key = schemas.key(after)
        key_texts = [texts[self.columns.index(c)] for c in self.key_columns] if self.key_columns else list(texts)
        change_id = self._ids.snapshot(point, self.schema, self.table, key_texts)
        self.last_op = "r"
        value: dict[str, Any] = {
            "before": None,
            "after": after,
            "source": self._source(point, point, None, ts_ms, marker),
            "op": "r",
            "ts_ms": int(time.time() * 1000),
            "change_id": change_id,
            "unchanged_toast": [],
        }
        headers = (("change_id", change_id.encode()), ("source_lsn", f"{point}:{point}".encode()))
        return [Record(self._topic, key, value, self._key_schema, self._value_schema, headers)]

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


class EventFactory:
    """Describes tables (catalog) and builds their `TableEvents`, once per table version."""

    def __init__(self, config: ConnectorConfig, conn: psycopg.Connection, ids: ChangeIds, db: str) -> None:
        assert config.source is not None
        self._config = config
        self._source: PostgresSourceConfig = config.source
        self._conn = conn
        self.ids = ids
        self._db = db

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
        if only is not None:
            include = [c for c in (include if include is not None else only) if c in only]
        schemas = build_table_schemas(
            info,
            topic=self.topic(table),
            topic_prefix=self._source.topic_prefix,
            decimal_handling=self._source.decimal_handling,
            skip_unsupported=options.skip_unsupported_columns,
            columns_include=include,
            columns_exclude=options.columns_exclude,
            key_columns=options.key_columns,
        )
        return TableEvents(
            schemas,
            connector_name=self._config.name,
            db=self._db,
            ids=self.ids,
            tombstones=self._source.tombstones_on_delete,
            relation_columns=relation_columns,
            replica_identity=info.replica_identity,
        )

    def for_table(self, table: TableRef) -> TableEvents:
        return self._build(table, self._describe(table), None, None)

    def for_relation(self, relation: Relation) -> TableEvents:
        table = TableRef(relation.namespace, relation.name)
        names = [c.name for c in relation.columns]
        info = self._describe(table)
        unknown = [n for n in names if n not in {c.name for c in info.columns}]
        if unknown:
            raise SchemaError(
                f"{table}: the stream carries columns the catalog no longer has ({', '.join(unknown)})",
                hint="a column was dropped while the connector lagged; its old values cannot be typed",
            )
        events = self._build(table, info, names, names)
        log.info("relation %s: %d columns, key %s", table, len(events.columns), ", ".join(events.key_columns) or "-")
        return events
