"""Config of the PostgreSQL sink (`sink:` section)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.settings import Section

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`500ms`, `30s`, `30m`, `12h`, `7d` -> timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write e.g. `30m`, `12h`, `7d`)")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class BatchConfig(Section):
    max_records: int = Field(5_000, ge=1, description="Most messages applied in one destination transaction.")
    max_wait_ms: int = Field(200, ge=0, description="Longest wait for a batch to fill.")


class DedupeConfig(Section):
    retention: str = Field("7d", description="How long applied change ids are kept (`30m`, `12h`, `7d`).")
    prune_interval: str = Field("1m", description="How often the background pruner looks for expired change ids.")
    prune_batch: int = Field(
        5_000, ge=1, description="Change ids deleted per pruning transaction (short transactions never block applies)."
    )

    @field_validator("retention", "prune_interval")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def retention_delta(self) -> timedelta:
        return parse_duration(self.retention)

    @property
    def prune_interval_seconds(self) -> float:
        return parse_duration(self.prune_interval).total_seconds()


class ErrorsConfig(Section):
    tolerance: Literal["none", "all"] = Field(
        "none", description="`none`: stop on a bad message; `all`: send it to the dead-letter topic and go on."
    )
    dead_letter_topic: str | None = Field(None, description="Dead-letter topic (required with tolerance `all`).")
    log_payloads: bool = Field(False, description="Include message values in error logs.")
    max_record_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="A message whose key plus value is larger than this is treated as poison (stop, or dead-letter).",
    )
    check_schema_subjects: bool = Field(
        True,
        description="Refuse a message whose schema id is not registered under its topic's subject (`{topic}-key`, "
        "`{topic}-value` or `{topic}-{record name}`), as a registry that lost its data reuses ids for other tables' "
        "schemas: stop, or dead-letter. Looked up once per schema id and topic. Turn off for producers using "
        "RecordNameStrategy.",
    )


class RetryConfig(Section):
    initial_backoff_ms: int = Field(200, ge=1, description="First wait after a retriable destination error.")
    max_backoff_ms: int = Field(30_000, ge=1, description="Longest wait between retries (exponential, with jitter).")
    max_attempts: int | None = Field(
        None,
        ge=1,
        description="Give up (stop the sink) after this many attempts of one batch; unset: retry until stopped.",
    )


class SchemaChangesConfig(Section):
    on_column_dropped: Literal["stop", "drop", "keep_nullable"] | None = Field(
        None,
        description="A destination column whose field is gone from the value schema (dropped in the source): `stop` "
        "with an error naming the fix, `drop` the destination column (its values are lost), or `keep_nullable` "
        "(keep it, drop its NOT NULL; new rows get NULL there). Unset: `keep_nullable` when "
        "`on_unsafe_schema_change` is `ignore`, else `stop`.",
    )
    on_column_renamed: Literal["rename", "drop_add"] = Field(
        "rename",
        description="A field whose Avro `aliases` name a destination column that is no field any more (a column "
        "renamed in the source): `rename` the destination column (values kept), or `drop_add` (add the new column; "
        "the old one follows `on_column_dropped`).",
    )


class PostgresSinkConfig(Section):
    dsn: SecretStr = Field(description="libpq connection string of the destination database.")
    group_id: str | None = Field(None, description="Consumer group; defaults to `cdc-{name}`.")
    topics: list[str] = Field(default_factory=list, description="Topics to consume.")
    topics_regex: str | None = Field(
        None, description="Consume every topic matching this regex (new matching topics are picked up)."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where to start a partition with no stored offset."
    )
    consumer_properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka consumer properties (on top of `kafka.properties`); auto commit and "
        "offset store stay off whatever is set here.",
    )
    target_schema: str = Field("public", description="Destination schema for replicated tables.")
    table_name_format: str = Field(
        "{table}", description="Destination table name from `{topic}`, `{schema}`, `{table}`."
    )
    table_map: dict[str, str] = Field(
        default_factory=dict, description="Explicit topic -> table names (wins over `table_name_format`)."
    )
    mode: Literal["upsert", "append"] = Field(
        "upsert", description="Upsert rows on the key, or append every change to a change-log table."
    )
    delete_handling: Literal["hard", "soft"] = Field(
        "hard",
        description="Delete rows, or keep them with `__cdc_deleted = true` and `__cdc_deleted_at` set.",
    )
    auto_create: bool = Field(True, description="Create destination tables from the value schema.")
    auto_evolve: bool = Field(True, description="Add new columns and widen column types of destination tables.")
    on_unsafe_schema_change: Literal["stop", "ignore"] = Field(
        "stop",
        description="A schema the table cannot take safely (column dropped in the source, type narrowed or changed): "
        "`stop` with an error, or `ignore` (keep the column, write values into the existing type).",
    )
    schema_changes: SchemaChangesConfig = Field(
        default_factory=SchemaChangesConfig,
        description="What the sink does to a destination table when a source column is dropped or renamed "
        "(widening and new columns are automatic with `auto_evolve`).",
    )
    snapshot_cleanup: bool = Field(
        True,
        description="When a source table's snapshot completes (its `cdc.snapshot.complete` marker), remove (or, with "
        "soft deletes, mark deleted) the destination rows positioned before that snapshot, which it did not write: "
        "rows deleted at the source while an interrupted snapshot was redone. Skipped, with a warning, for a table "
        "the sink has seen fed by several source tables; turn off for tables that merge several sources.",
    )
    connect_timeout_s: int = Field(
        10,
        ge=2,
        description="Seconds a connection to the destination database may take to open (per address the host "
        "resolves to) before the attempt fails and is retried.",
    )
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batching.")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Applied-change ledger.")
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig, description="Bad messages.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries of retriable destination errors.")

    @property
    def on_column_dropped(self) -> Literal["stop", "drop", "keep_nullable"]:
        """The drop policy in effect: the explicit key, else the one `on_unsafe_schema_change` implies."""
        if self.schema_changes.on_column_dropped is not None:
            return self.schema_changes.on_column_dropped
        return "keep_nullable" if self.on_unsafe_schema_change == "ignore" else "stop"

    @model_validator(mode="after")
    def _topics_given(self) -> PostgresSinkConfig:
        if not self.topics and not self.topics_regex:
            raise ValueError("give `topics` or `topics_regex`")
        if self.errors.tolerance == "all" and not self.errors.dead_letter_topic:
            raise ValueError("errors.tolerance `all` needs errors.dead_letter_topic")
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms:
            raise ValueError("retry.max_backoff_ms must be >= retry.initial_backoff_ms")
        try:
            self.table_name_format.format(topic="t", schema="s", table="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"table_name_format may only use {{topic}}, {{schema}}, {{table}} (got {exc})"
            ) from None
        return self
