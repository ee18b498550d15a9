"""The connector config file: one model per section, loaded from YAML with clear errors.

`load_config(path)` is the only way the runtime reads a config; it interpolates `${VAR}`,
validates every section, and reports errors with the key path and line, secrets redacted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, SecretStr, Tag, ValidationError, model_validator

from connector.config_loader import LoadedDocument, format_path, load_yaml, read_file
from core.errors import ConfigError
from core.settings import Section
from sinks.postgres.config import PostgresSinkConfig
from sources.postgres.config import PostgresSourceConfig
from transforms.config import TransformsBySide, TransformSpec

_SECRET_KEY_WORDS = ("password", "secret", "token", "jaas", "credential", "private")


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


class KafkaConfig(Section):
    bootstrap_servers: str = Field(description="Kafka bootstrap servers, `host:port[,host:port]`.")
    topic_partitions: int = Field(1, ge=1, description="Partitions of topics the connector creates.")
    topic_replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds one metadata or topic-creation request to the brokers may take before it counts as a "
        "failed attempt (retried within `retry.give_up_after_s`).",
    )
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka properties (security, tuning). Keys naming a password, secret or "
        "token are redacted wherever the config is shown.",
    )


class Compatibility(StrEnum):
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


class SchemaRegistryConfig(Section):
    url: str = Field(description="Confluent-compatible registry URL (Apicurio: `.../apis/ccompat/v7`).")
    basic_auth_user_info: SecretStr | None = Field(None, description="`user:password` for basic auth.")
    compatibility: Compatibility = Field(
        Compatibility.BACKWARD,
        description="Compatibility level set on every subject the connector registers (set explicitly "
        "because registries differ in their defaults).",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds each registry request (connect, send, each read) may take before it fails; a failed "
        "request is tried twice more.",
    )

    def client_settings(self) -> dict[str, Any]:
        """Settings of confluent-kafka's `SchemaRegistryClient` (holds the credentials: never log them)."""
        settings: dict[str, Any] = {"url": self.url, "timeout": self.request_timeout_s, "max.retries": 2}
        if self.basic_auth_user_info is not None:
            settings["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        return settings


class ServerConfig(Section):
    enabled: bool = Field(True, description="Serve /healthz, /readyz and /metrics.")
    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(8083, ge=0, le=65535, description="Listen port (0: any free port).")


class RetryBudgetConfig(Section):
    give_up_after_s: float | None = Field(
        300.0,
        ge=0,
        description="How long a component keeps retrying a service it cannot reach (PostgreSQL, Kafka, the "
        "registry) or that keeps failing with retriable errors, counted from the first failure since the last "
        "success, before the connector stops with exit code 1; null retries until stopped. Refused credentials, "
        "unknown roles or databases and missing privileges stop it at once. See docs/operations.md.",
    )


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

    @model_validator(mode="after")
    def _check_sections(self) -> ConnectorConfig:
        if self.source is None and self.sink is None:
            raise ValueError("a config needs a `source` section, a `sink` section, or both")
        if isinstance(self.transforms, list) and self.transforms and self.source and self.sink:
            raise ValueError(
                "with both a source and a sink, write `transforms: {source: [...], sink: [...]}` "
                "so each transform's side is explicit"
            )
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
