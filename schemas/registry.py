"""The Schema Registry as the connector uses it: register, look up by id, check compatibility.

Talks the Confluent-compatible REST API (Apicurio 3.x at `/apis/ccompat/v7`, or Confluent) through
confluent-kafka's `SchemaRegistryClient`. Registries differ in their defaults: Apicurio enforces no
compatibility unless told, so before the first registration on a subject the configured level is set on it.
Errors are mapped once here: unreachable -> RetriableError (with the URL, never credentials),
incompatible -> SchemaError naming the subject, what changed and the fix.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from pydantic import Field, SecretStr, model_validator

from core.errors import ConfigError, ConnectorError, RetriableError, SchemaError
from core.records import AvroSchema
from core.settings import Section
from schemas.compat import describe_changes, encoding_style

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    basic_auth_user_info: SecretStr | None = Field(
        None, description="`user:password` for HTTP basic auth (from `${VAR}`; redacted wherever the config is shown)."
    )
    bearer_auth_token: SecretStr | None = Field(
        None,
        description="A static bearer token sent as `Authorization: Bearer ...` (OIDC-protected registries); not "
        "together with `basic_auth_user_info`. Redacted wherever the config is shown.",
    )
    bearer_auth_logical_cluster: str = Field(
        "",
        description="Confluent Cloud's logical cluster id, sent with a bearer token (`target-sr-cluster` header); "
        "empty for other registries.",
    )
    ssl_ca_location: str | None = Field(
        None,
        description="PEM file of the CA that signed an `https` registry's certificate; unset: the system's trust "
        "store.",
    )
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
        if self.bearer_auth_token is not None:
            settings["bearer.auth.credentials.source"] = "STATIC_TOKEN"
            settings["bearer.auth.token"] = self.bearer_auth_token.get_secret_value()
            settings["bearer.auth.logical.cluster"] = self.bearer_auth_logical_cluster
        if self.ssl_ca_location is not None:
            settings["ssl.ca.location"] = self.ssl_ca_location
        return settings

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> SchemaRegistryConfig:
        if self.basic_auth_user_info is not None and self.bearer_auth_token is not None:
            raise ValueError("set `basic_auth_user_info` or `bearer_auth_token`, not both")
        return self


def registry_client(config: SchemaRegistryConfig, timeout_s: float | None = None) -> SchemaRegistryClient:
    """The one way a registry client is built (`timeout_s` overrides the configured request timeout)."""
    settings = config.client_settings()
    if timeout_s is not None:
        settings["timeout"] = timeout_s
    try:
        return SchemaRegistryClient(settings)
    except (ValueError, TypeError) as exc:
        # The client's messages name settings, never their values.
        raise ConfigError(
            f"schema registry settings for {redact_url(config.url)} are invalid: {exc}",
            hint="check `schema_registry.url`, `schema_registry.basic_auth_user_info` / `bearer_auth_token` and "
            "`ssl_ca_location`",
        ) from None

# Confluent error codes (Apicurio's ccompat API uses the same).
_SUBJECT_NOT_FOUND = 40401
_VERSION_NOT_FOUND = 40402
_SCHEMA_NOT_FOUND = 40403


def topic_subjects(topic: str, is_key: bool, record_name: str | None) -> tuple[str, ...]:
    """The subjects a key or value schema of `topic` may be registered under.

    TopicNameStrategy (`{topic}-key` / `{topic}-value`, what the connector and Debezium use) and
    TopicRecordNameStrategy (`{topic}-{record full name}`).
    """
    default = f"{topic}-{'key' if is_key else 'value'}"
    return (default, f"{topic}-{record_name}") if record_name else (default,)


def redact_url(url: str) -> str:
    """The URL without user info (credentials may be embedded as `user:pass@host`)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class CompatResult:
    """Whether `schema` may be registered under `subject` now; `messages` say what changed against the latest."""

    subject: str
    compatible: bool
    exists: bool
    messages: list[str] = field(default_factory=list)
    latest_version: int | None = None
    level: str | None = None
    latest_schema: AvroSchema | None = None


class SchemaNotFoundError(SchemaError):
    """The registry holds no schema with this id (or no such subject)."""


class SchemaRegistry:
    """A registry client with per-process caches.

    `register` is idempotent and cached per (subject, schema text); `schema_by_id` is cached forever (ids
    are immutable). Thread-safe: the caches are guarded by one lock, HTTP calls run outside it.
    """

    def __init__(self, config: SchemaRegistryConfig, *, client: SchemaRegistryClient | None = None) -> None:
        self._config = config
        self.url = redact_url(config.url)
        self._client = client if client is not None else registry_client(config)
        self._lock = threading.Lock()
        self._registered: dict[tuple[str, str], int] = {}
        self._by_id: dict[int, AvroSchema] = {}
        self._configured: set[str] = set()

    def close(self) -> None:
        """Close the HTTP session (safe to call twice; the registry is unusable afterwards)."""
        self._client.close()

    def __enter__(self) -> SchemaRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def compatibility(self) -> str:
        return self._config.compatibility.value

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SchemaRegistryError:
            raise
        except ConnectorError:
            raise
        except Exception as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
                raise SchemaError(
                    f"TLS with the schema registry at {self.url} failed: its certificate could not be verified",
                    hint="set `schema_registry.ssl_ca_location` to the PEM file of the CA that signed it",
                ) from exc
            # httpx transport errors, timeouts, DNS: the registry is not reachable right now.
            raise RetriableError(
                f"schema registry at {self.url} is unreachable ({what}: {type(exc).__name__})",
                hint="check `schema_registry.url` and that the registry is running",
            ) from exc

    def _http_error(self, exc: SchemaRegistryError, what: str) -> ConnectorError:
        status = exc.http_status_code
        if status in (401, 403):
            return SchemaError(
                f"schema registry at {self.url} refused {what} (HTTP {status})",
                hint="check `schema_registry.basic_auth_user_info` (or `bearer_auth_token`) and the account's "
                "permissions",
            )
        if status == 404 and exc.error_code is None and not exc.error_message:
            # A registry's own 404s carry an error code (40401 subject not found...); a bare one means no API here.
            return SchemaError(
                f"schema registry at {self.url} has no Confluent-compatible API at that URL ({what}: HTTP 404)",
                hint="the URL may be missing its path: Apicurio serves it under /apis/ccompat/v7 "
                "(check `schema_registry.url`)",
            )
        if status is None or status >= 500 or status in (408, 429):
            return RetriableError(f"schema registry at {self.url} failed {what}: {exc.error_message} (HTTP {status})")
        return SchemaError(f"schema registry at {self.url} rejected {what}: {exc.error_message} (HTTP {status})")

    # -- registration --------------------------------------------------------------------------------------

    def register(self, subject: str, schema: AvroSchema) -> int:
        """Register `schema` under `subject` (no-op if already there) and return its id."""
        key = (subject, schema.text)
        with self._lock:
            cached = self._registered.get(key)
        if cached is not None:
            return cached
        self._ensure_compatibility(subject)
        try:
            schema_id = int(self._call("register", self._client.register_schema, subject, Schema(schema.text, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise self._incompatible(subject, schema) from None
            if exc.http_status_code == 422:
                raise SchemaError(
                    f"schema registry at {self.url} rejected the schema of subject {subject} as invalid: "
                    f"{exc.error_message}",
                    hint="report this as a bug with the table's definition",
                ) from None
            raise self._http_error(exc, f"registering subject {subject}") from None
        with self._lock:
            self._registered[key] = schema_id
            self._by_id.setdefault(schema_id, schema)
        log.debug("registered %s as schema id %d", subject, schema_id)
        return schema_id

    def _ensure_compatibility(self, subject: str) -> None:
        with self._lock:
            if subject in self._configured:
                return
        try:
            self._call("set compatibility", self._client.set_compatibility, subject, self.compatibility)
        except SchemaRegistryError as exc:
            raise self._http_error(exc, f"setting the compatibility of subject {subject}") from None
        with self._lock:
            self._configured.add(subject)

    def _incompatible(self, subject: str, schema: AvroSchema) -> SchemaError:
        latest = self.latest(subject)
        changes = describe_changes(latest[1], schema) if latest is not None else []
        what = "; ".join(changes) if changes else "the registry's compatibility rules reject it"
        registered_style = encoding_style(latest[1]) if latest is not None else None
        new_style = encoding_style(schema)
        if latest is not None and registered_style is not None and new_style not in (None, registered_style):
            return SchemaError(
                f"schema for subject {subject} is not {self.compatibility}-compatible with version {latest[0]}: "
                f"the subject holds `schema_style: {registered_style}` records and this connector writes "
                f"`{new_style}` ({what})",
                hint=f"set `source.schema_style: {registered_style}` to keep writing these topics as before, or "
                "move to new topics (another `topic_prefix`) and re-snapshot; docs/event-format.md, "
                "\"Debezium compatibility\"",
            )
        return SchemaError(
            f"schema for subject {subject} is not {self.compatibility}-compatible with version "
            f"{latest[0] if latest else '?'}: {what}",
            hint="revert the table change, or make it compatible (add columns as nullable, widen types only), "
            "or register the new schema under a new topic; `cdc schemas check` shows this before a migration",
        )

    # -- lookups --------------------------------------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        """The schema with this id; raises SchemaNotFoundError for an id the registry does not hold."""
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            found = self._call("get schema", self._client.get_schema, schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaNotFoundError(
                    f"schema registry at {self.url} has no schema with id {schema_id}",
                    hint="the message was written against another registry, or the registry lost its data "
                    "(Apicurio's default in-memory storage forgets schemas on restart)",
                ) from None
            raise self._http_error(exc, f"looking up schema id {schema_id}") from None
        if (found.schema_type or "AVRO") != "AVRO":
            raise SchemaError(f"schema id {schema_id} is a {found.schema_type} schema, not Avro")
        schema = AvroSchema.parse(found.schema_str)
        with self._lock:
            self._by_id[schema_id] = schema
        return schema

    def subjects_of(self, schema_id: int) -> list[str]:
        """The subjects this schema id is registered under (`GET /schemas/ids/{id}/subjects`); empty if none."""
        try:
            found = self._call("get subjects of schema id", self._client.get_subjects_by_schema_id, schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return []
            raise self._http_error(exc, f"looking up the subjects of schema id {schema_id}") from None
        return [str(subject) for subject in found]

    def subjects(self) -> list[str]:
        try:
            return list(self._call("list subjects", self._client.get_subjects))
        except SchemaRegistryError as exc:
            raise self._http_error(exc, "listing subjects") from None

    def latest(self, subject: str) -> tuple[int, AvroSchema, int] | None:
        """(version, schema, id) of the subject's latest version, or None when the subject does not exist."""
        try:
            registered = self._call("get latest version", self._client.get_latest_version, subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise self._http_error(exc, f"reading subject {subject}") from None
        return int(registered.version), AvroSchema.parse(registered.schema.schema_str), int(registered.schema_id)

    def newest(self, subject: str) -> AvroSchema | None:
        """The subject's highest version, read by its number (not through the client's latest-version cache)."""
        try:
            versions = self._call("list versions", self._client.get_versions, subject)
            if not versions:
                return None
            registered = self._call("get version", self._client.get_version, subject, max(versions))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise self._http_error(exc, f"reading subject {subject}") from None
        return AvroSchema.parse(registered.schema.schema_str)

    def check(self, subject: str, schema: AvroSchema) -> CompatResult:
        """Would `schema` be accepted under `subject` with the configured level? A new subject is compatible.

        The level checked is the configured one (what `register` would set), not the subject's current
        level on the registry, so the check means the same on Apicurio (no default rule) and Confluent.
        """
        latest = self.latest(subject)
        if latest is None:
            return CompatResult(subject=subject, compatible=True, exists=False, level=self.compatibility)
        version, current, _ = latest
        messages = describe_changes(current, schema)
        if current.text == schema.text:
            return CompatResult(subject, True, True, [], version, self.compatibility, current)
        self._ensure_compatibility(subject)
        try:
            ok = bool(
                self._call(
                    "test compatibility",
                    self._client.test_compatibility,
                    subject,
                    Schema(schema.text, "AVRO"),
                    "latest",
                )
            )
        except SchemaRegistryError as exc:
            raise self._http_error(exc, f"testing compatibility of subject {subject}") from None
        return CompatResult(subject, ok, True, messages, version, self.compatibility, current)
