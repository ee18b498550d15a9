"""The connector config file: one model per section, loaded from YAML with clear errors.

`load_config(path)` is the only way the runtime reads a config; it interpolates `${VAR}`,
validates every section, and reports errors with the key path and line, secrets redacted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from connector.config_loader import LoadedDocument, format_path, load_yaml, read_file
from core.errors import ConfigError, RetryBudgetConfig
from core.kafka import KafkaConfig
from core.settings import Section
from schemas.registry import Compatibility, SchemaRegistryConfig
from sinks.postgres.config import PostgresSinkConfig
from sources.postgres.config import PostgresSourceConfig
from transforms.config import TransformsBySide, TransformSpec

# The sections other layers own, re-exported: the config file is assembled here.
__all__ = [
    "Compatibility",
    "ConnectorConfig",
    "KafkaConfig",
    "LoggingConfig",
    "RetryBudgetConfig",
    "SchemaRegistryConfig",
    "ServerConfig",
    "json_schema",
    "load_config",
    "redacted",
]

_SECRET_KEY_WORDS = ("password", "secret", "token", "jaas", "credential", "private")


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


class ServerConfig(Section):
    enabled: bool = Field(True, description="Serve /healthz, /readyz and /metrics.")
    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(8083, ge=0, le=65535, description="Listen port (0: any free port).")


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="Plain text or one JSON object per line.")


class ConnectorConfig(Section):
    """A connector: a source, a sink, or both, with the services they use."""

    name: str = Field(description="Connector name: appears in events (`source.name`) and group ids.")
    source: PostgresSourceConfig | None = Field(None, description="PostgreSQL source.")
    kafka: KafkaConfig = Field(description="Kafka cluster.")
    schema_registry: SchemaRegistryConfig = Field(description="Schema Registry.")
    transforms: Annotated[
        Annotated[list[TransformSpec], Tag("list")] | Annotated[TransformsBySide, Tag("by_side")],
        Discriminator(lambda v: "list" if isinstance(v, list) else "by_side"),
    ] = Field(
        default_factory=list,
        description="Single-message transforms: a list (for the one side this config runs) or "
        "`{source: [...], sink: [...]}`.",
    )
    sink: PostgresSinkConfig | None = Field(None, description="PostgreSQL sink.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Health and metrics endpoints.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    retry: RetryBudgetConfig = Field(
        default_factory=RetryBudgetConfig, description="Retry budget for unreachable or failing services."
    )
    shutdown_grace_s: float = Field(
        30.0,
        gt=0,
        description="Seconds `cdc run` waits after SIGTERM/SIGINT for in-flight work to finish; then it exits "
        "with code 1 (a second signal exits at once). Keep it below the orchestrator's own grace period.",
    )
    processes: Literal["auto", 1, 2] = Field(
        "auto",
        description="With both a source and a sink: 1 runs them on two threads of one process (one interpreter "
        "lock: one core's worth of Python for both); 2 runs the sink in a child process, so each side has a core; "
        "`auto` picks 2 when this process has at least 2 CPUs of its own (a cgroup CPU limit) or may use at least "
        "4, else 1. "
        "`cdc run --processes` overrides it. See docs/operations.md.",
    )

    @model_validator(mode="after")
    def _check_sections(self) -> ConnectorConfig:
        if self.source is None and self.sink is None:
            raise ValueError("a config needs a `source` section, a `sink` section, or both")
        if isinstance(self.transforms, list) and self.transforms and self.source and self.sink:
            raise ValueError(
                "with both a source and a sink, write `transforms: {source: [...], sink: [...]}` "
                "so each transform's side is explicit"
            )
        if self.processes == 2 and (self.source is None or self.sink is None):
            raise ValueError("`processes: 2` runs the sink beside the source: it needs both sections (or use `auto`)")
        return self

    def transforms_for(self, side: Literal["source", "sink"]) -> list[TransformSpec]:
        if isinstance(self.transforms, TransformsBySide):
            return list(getattr(self.transforms, side))
        owner = "source" if self.source is not None else "sink"
        return list(self.transforms) if side == owner else []

    @property
    def group_id(self) -> str:
        return (self.sink.group_id if self.sink and self.sink.group_id else None) or f"cdc-{self.name}"


_TAGS = {"list", "by_side"}


def _describe(error: Mapping[str, Any], document: LoadedDocument) -> str:
    path = tuple(error["loc"])
    # pydantic puts union member names (`list[TransformSpec]`) into the path; drop them for users.
    path = tuple(p for p in path if not (isinstance(p, str) and ("[" in p or p[:1].isupper() or p in _TAGS)))
    line = document.line_of(path)
    where = format_path(path) + (f" (line {line})" if line else "")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    # Never echo the offending input: it may be a secret.
    return f"{where}: {error['msg']}"


def parse_config(document: LoadedDocument) -> ConnectorConfig:
    try:
        return ConnectorConfig.model_validate(document.data)
    except ValidationError as exc:
        problems = [_describe(e, document) for e in exc.errors(include_input=False, include_url=False)]
        unique = list(dict.fromkeys(problems))
        raise ConfigError(
            f"{document.source}: " + "; ".join(unique[:10]) + (" ..." if len(unique) > 10 else ""),
            hint="`cdc config schema` prints every key with its description",
        ) from None


def load_config(path: Path | str, *, env: Mapping[str, str] | None = None) -> ConnectorConfig:
    path = Path(path)
    return parse_config(load_yaml(read_file(path), source=str(path), env=env))


def redacted(config: ConnectorConfig) -> dict[str, Any]:
    """The resolved config as plain data with every secret replaced by `**********`."""
    data = json.loads(config.model_dump_json())  # SecretStr dumps as '**********'

    def scrub(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if key and is_secret_key(key) and value is not None:
            return "**********"
        return value

    return scrub(data)


def json_schema() -> dict[str, Any]:
    schema = ConnectorConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cdc-connector config"
    return schema
