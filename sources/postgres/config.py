"""Config of the PostgreSQL source (`source:` section)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, SecretStr

from core.settings import Section
from schemas.types import DecimalHandling, SchemaStyle


class SnapshotMode(StrEnum):
    INITIAL = "initial"
    NEVER = "never"
    INITIAL_ONLY = "initial_only"
    WHEN_NEEDED = "when_needed"


class SlotConfig(Section):
    name: str = Field(description="Replication slot name (created when missing).", pattern=r"^[a-z0-9_]{1,63}$")
    on_conflict: Literal["fail", "wait"] = Field(
        "fail",
        description="When another process streams the slot: `fail` at once naming its pid, or `wait` as a standby.",
    )


class PublicationConfig(Section):
    name: str = Field(description="Publication name.")
    mode: Literal["create", "existing"] = Field(
        "create",
        description="`create`: create the publication and keep its tables in sync with `tables`; "
        "`existing`: use one a DBA made, unchanged.",
    )
    via_partition_root: bool = Field(
        True,
        description="Publish a partitioned table's changes as its own (`publish_via_partition_root`, PostgreSQL "
        "13+): one topic per partitioned table, as the snapshot reads it. `false`: changes carry the partition's "
        "name and go to one topic per partition. Applied in mode `create`.",
    )


class TableSelection(Section):
    include: list[str] = Field(
        default_factory=lambda: ["public.*"],
        description="`schema.table` patterns (`*` and `?` wildcards) of the tables to capture.",
    )
    exclude: list[str] = Field(default_factory=list, description="Patterns removed from `include`.")
    on_keyless_table: Literal["skip", "stop"] = Field(
        "skip",
        description="A matching table without a usable replica identity (no primary key and REPLICA IDENTITY "
        "DEFAULT, or NOTHING; or FULL without `key_columns`): `skip` logs the fix and captures the other tables, "
        "`stop` refuses to start. Either way such a table is never added to the publication, so the "
        "application's own UPDATE and DELETE on it keep working.",
    )
    discovery_interval_s: float = Field(
        30.0,
        ge=0,
        description="Seconds between two looks, while streaming, for tables that newly match `include`/`exclude`: "
        "they are added to the publication (`publication.mode: create`) and their existing rows copied. "
        "0 disables the look (tables newly matching at start-up are still added and copied).",
    )


class TableOptions(Section):
    columns_include: list[str] | None = Field(None, description="Only these columns are captured.")
    columns_exclude: list[str] = Field(default_factory=list, description="These columns are never captured.")
    row_filter: str | None = Field(
        None,
        description="A SQL boolean expression over the table's columns; only matching rows are captured "
        "(pushed into the publication on PostgreSQL 15+).",
    )
    key_columns: list[str] | None = Field(
        None, description="Key columns for a table without a primary key (with REPLICA IDENTITY FULL)."
    )
    skip_unsupported_columns: bool = Field(
        False, description="Drop columns whose type cannot be mapped instead of failing."
    )


class SnapshotConfig(Section):
    mode: SnapshotMode = Field(SnapshotMode.INITIAL, description="When to take a consistent initial snapshot.")
    chunk_size: int = Field(10_000, ge=1, description="Rows read per keyset-ordered chunk.")
    complete_markers: bool = Field(
        True,
        description="After each table's snapshot, send a keyless, valueless record with header "
        "`cdc.snapshot.complete` to every partition of its topic, so sinks can remove rows the snapshot did not "
        "write (rows deleted while an interrupted snapshot was redone). See docs/event-format.md.",
    )
    new_tables: Literal["copy", "incremental"] = Field(
        "copy",
        description="How the existing rows of a table that newly matches `tables.include` are read: `copy` in one go "
        "in a snapshot of its own (the stream waits), or `incremental`: an incremental snapshot, in chunks while "
        "the stream goes on (docs/source.md, \"Incremental snapshots\").",
    )
    initial: Literal["copy", "incremental"] = Field(
        "copy",
        description="How the initial snapshot (modes `initial`, `when_needed`) reads the captured tables: `copy` in "
        "one transaction of an exported snapshot before streaming, or `incremental`: every table queued as an "
        "incremental snapshot, read in chunks while the stream goes on (no long transaction; resumed after a "
        "crash from the last acknowledged chunk; docs/source.md).",
    )


class IncrementalSnapshotConfig(Section):
    chunk_size: int = Field(
        1024,
        ge=1,
        description="Rows read per chunk of an incremental snapshot (keyset pagination by the table's key); one "
        "chunk is read between a low and a high watermark while the stream goes on (docs/source.md).",
    )
    parallelism: int = Field(
        1,
        ge=1,
        le=64,
        description="Chunks read at once, each on a connection of its own, between one low and one high watermark: "
        "of several requested tables, and of key ranges of a large table (split by its primary key at its first "
        "chunk). Memory holds up to `parallelism * chunk_size` rows.",
    )


class SignalConfig(Section):
    table: str | None = Field(
        None,
        description="`schema.table` of the signal table (Debezium's `signal.data.collection`): rows inserted into it "
        "(`id`, `type`, `data`) reach the source through the WAL and start, stop, pause or resume incremental "
        "snapshots. Created when missing and added to the publication (`publication.mode: create`). Unset: no "
        "signals, and `cdc snapshot` is refused.",
        pattern=r"^[^.]+\.[^.]+$",
    )


class HeartbeatConfig(Section):
    enabled: bool = Field(True, description="Send heartbeats so an idle publication does not pin WAL.")
    interval_s: float = Field(10.0, gt=0, description="Seconds between heartbeats.")
    emit_message: bool = Field(
        True, description="Also write a `pg_logical_emit_message` so the slot can advance on an idle database."
    )


class PostgresSourceConfig(Section):
    dsn: SecretStr = Field(description="libpq connection string of the source database.")
    topic_prefix: str = Field(description="Topics are `{topic_prefix}.{schema}.{table}`.")
    slot: SlotConfig
    publication: PublicationConfig
    tables: TableSelection = Field(default_factory=TableSelection, description="Which tables to capture.")
    table_options: dict[str, TableOptions] = Field(
        default_factory=dict, description="Per-table options keyed by `schema.table`."
    )
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig, description="Initial snapshot.")
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig, description="Heartbeats.")
    incremental_snapshot: IncrementalSnapshotConfig = Field(
        default_factory=IncrementalSnapshotConfig, description="Incremental (watermark) snapshots."
    )
    signal: SignalConfig = Field(default_factory=SignalConfig, description="The signal table.")
    decimal_handling: DecimalHandling = Field(
        DecimalHandling.PRECISE,
        description="numeric values: `precise` (Avro decimal), `string`, or `double`.",
    )
    schema_style: SchemaStyle = Field(
        SchemaStyle.DEBEZIUM,
        description="Field encodings: `debezium` (Debezium's Avro under its default settings, readable by Kafka "
        "Connect converters) or `avro_native` (Avro logical types, NaN-preserving numerics; not readable by Connect "
        "converters). docs/event-format.md, Debezium compatibility.",
    )
    tombstones_on_delete: bool = Field(True, description="Emit a null-value record after each delete.")
    emit_truncate: bool = Field(True, description="Emit TRUNCATE as an `op = t` event.")
    status_interval_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between standby status updates sent even when nothing new was acknowledged "
        "(a keepalive to the server; the effective period is at most `heartbeat.interval_s`).",
    )
    confirm_interval_ms: int = Field(
        250,
        ge=10,
        le=60_000,
        description="Shortest time between two standby status updates that advance the slot: what Kafka has "
        "acknowledged is confirmed to the server within about this long, so after a crash the slot replays only "
        "the changes of about the last interval.",
    )
    connect_timeout_s: int = Field(
        10,
        ge=2,
        description="Seconds a connection to the source database may take to open (per address the host "
        "resolves to) before the attempt fails and is retried.",
    )
    receive_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds the replication stream may stay silent before the connection is considered lost and "
        "reopened; at half of it a status update asks the server for an immediate reply, and side queries while "
        "streaming (heartbeat, lag) are bounded by it. Unset: the server's `wal_sender_timeout` (60 s when that "
        "is 0), the time after which the server gives up on us too.",
    )
    encode_workers: int = Field(
        0,
        ge=0,
        le=32,
        description="Processes that convert and Avro-encode streamed changes in parallel (0: in the reading "
        "process). Used when no source-side transforms are configured.",
    )
