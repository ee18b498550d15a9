"""Config of the PostgreSQL sink (`sink:` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from connector.settings import Section


class BatchConfig(Section):
    max_records: int = Field(5_000, ge=1, description="Most messages applied in one destination transaction.")
    max_wait_ms: int = Field(200, ge=0, description="Longest wait for a batch to fill.")


class DedupeConfig(Section):
    retention: str = Field("7d", description="How long applied change ids are kept (`30m`, `12h`, `7d`).")


class ErrorsConfig(Section):
    tolerance: Literal["none", "all"] = Field(
        "none", description="`none`: stop on a bad message; `all`: send it to the dead-letter topic and go on."
    )
    dead_letter_topic: str | None = Field(None, description="Dead-letter topic (required with tolerance `all`).")
    log_payloads: bool = Field(False, description="Include message values in error logs.")


class PostgresSinkConfig(Section):
    dsn: SecretStr = Field(description="libpq connection string of the destination database.")
    group_id: str | None = Field(None, description="Consumer group; defaults to `cdc-{name}`.")
    topics: list[str] = Field(default_factory=list, description="Topics to consume.")
    topics_regex: str | None = Field(None, description="Consume every topic matching this regex.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where to start a partition with no stored offset."
    )
    target_schema: str = Field("public", description="Destination schema for replicated tables.")
    table_name_format: str = Field(
        "{table}", description="Destination table name from `{topic}`, `{schema}`, `{table}`."
    )
    table_map: dict[str, str] = Field(default_factory=dict, description="Explicit topic -> table names.")
    mode: Literal["upsert", "append"] = Field("upsert", description="Upsert rows, or append a change log.")
    delete_handling: Literal["hard", "soft"] = Field("hard", description="Delete rows, or mark them deleted.")
    auto_create: bool = Field(True, description="Create destination tables from the value schema.")
    auto_evolve: bool = Field(True, description="Add new columns to destination tables.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batching.")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Applied-change ledger.")
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig, description="Bad messages.")

    @model_validator(mode="after")
    def _topics_given(self) -> PostgresSinkConfig:
        if not self.topics and not self.topics_regex:
            raise ValueError("give `topics` or `topics_regex`")
        if self.errors.tolerance == "all" and not self.errors.dead_letter_topic:
            raise ValueError("errors.tolerance `all` needs errors.dead_letter_topic")
        return self
