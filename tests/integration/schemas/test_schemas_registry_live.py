"""`SchemaRegistry` against the live registry (Apicurio's Confluent-compatible API in the dev stack)."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from connector.config import Compatibility, SchemaRegistryConfig
from core.errors import ConfigError, RetriableError, SchemaError
from core.records import AvroSchema
from schemas.compat import describe_changes
from schemas.envelope import build_table_schemas
from schemas.registry import SchemaNotFoundError, SchemaRegistry
from schemas.types import SchemaStyle
from tests.support.stack import Stack
from tests.unit.schemas.schemas_support import column, table

pytestmark = pytest.mark.integration


def value_schema(prefix: str, *extra: object) -> AvroSchema:
    columns = [column("id", "int8", not_null=True, key_position=1), column("name", "text"), *extra]
    return build_table_schemas(table(*columns), topic=f"{prefix}.public.t", topic_prefix=prefix).value_schema  # type: ignore[arg-type]


def subject_level(stack: Stack, subject: str) -> str:
    with urllib.request.urlopen(f"{stack.registry_url}/config/{subject}", timeout=10) as response:
        return str(json.load(response)["compatibilityLevel"])


def test_register_sets_the_level_first_and_is_idempotent(stack: Stack, unique_name: Callable[[str], str]) -> None:
    prefix = unique_name("reg")
    subject = f"{prefix}.public.t-value"
    schema = value_schema(prefix)
    config = SchemaRegistryConfig(url=stack.registry_url, compatibility=Compatibility.FULL)
    with SchemaRegistry(config) as registry:
        schema_id = registry.register(subject, schema)
        assert registry.register(subject, schema) == schema_id
        assert subject_level(stack, subject) == "FULL"
        # (not `subjects()`: Apicurio lists at most apicurio.ccompat.max-subjects, 1000 by default)
        latest = registry.latest(subject)
        assert latest is not None and latest[0] == 1 and latest[2] == schema_id
    with SchemaRegistry(config) as fresh:
        assert fresh.register(subject, schema) == schema_id  # the registry, not our cache, says so
        fetched = fresh.schema_by_id(schema_id)
        assert fetched.name == schema.name
        assert describe_changes(schema, fetched) == []
        assert fresh.latest(f"{prefix}.nothing-value") is None


def test_incompatible_registration_names_subject_change_and_fix(
    stack: Stack, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("reg")
    subject = f"{prefix}.public.t-value"
    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        registry.register(subject, value_schema(prefix))
        added = value_schema(prefix, column("extra", "text"))
        check = registry.check(subject, added)
        assert (check.exists, check.compatible, check.latest_version) == (True, True, 1)
        assert check.messages == ["column extra added (nullable, default null)"]
        retyped = build_table_schemas(
            table(column("id", "int8", not_null=True, key_position=1), column("name", "int4")),
            topic=f"{prefix}.public.t", topic_prefix=prefix,
        ).value_schema  # fmt: skip
        assert registry.check(subject, retyped).compatible is False
        with pytest.raises(SchemaError) as caught:
            registry.register(subject, retyped)
    message = str(caught.value)
    assert f"schema for subject {subject} is not BACKWARD-compatible with version 1" in message
    assert "column name changed type: text (string) -> int4 (int)" in message
    assert "cdc schemas check" in (caught.value.hint or "")
    new = SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url))
    with new:
        fresh = new.check(f"{prefix}.other-value", retyped)
    assert (fresh.exists, fresh.compatible) == (False, True)


def test_a_change_of_schema_style_is_named_with_the_setting_that_keeps_the_topics(
    stack: Stack, unique_name: Callable[[str], str]
) -> None:
    """A connector whose topics hold `avro_native` records, upgraded to the `debezium` default, is told why."""
    prefix = unique_name("reg")
    subject = f"{prefix}.public.t-value"
    columns = table(column("id", "int8", not_null=True, key_position=1), column("at", "timestamptz"))

    def schema(style: SchemaStyle) -> AvroSchema:
        return build_table_schemas(
            columns, topic=f"{prefix}.public.t", topic_prefix=prefix, schema_style=style
        ).value_schema

    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        registry.register(subject, schema(SchemaStyle.AVRO_NATIVE))
        with pytest.raises(SchemaError) as caught:
            registry.register(subject, schema(SchemaStyle.DEBEZIUM))
    assert "holds `schema_style: avro_native` records and this connector writes `debezium`" in str(caught.value)
    assert "set `source.schema_style: avro_native`" in (caught.value.hint or "")


def test_unknown_schema_id(stack: Stack) -> None:
    registry = SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url))
    with registry, pytest.raises(SchemaNotFoundError, match="has no schema with id 2147483000"):
        registry.schema_by_id(2147483000)


def test_unreachable_registry_is_retriable_and_hides_credentials() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    url = f"http://alice:hunter2@127.0.0.1:{port}/apis/ccompat/v7"
    registry = SchemaRegistry(SchemaRegistryConfig(url=url))
    with registry, pytest.raises(RetriableError) as caught:
        registry.subjects()
    assert f"schema registry at http://127.0.0.1:{port}/apis/ccompat/v7 is unreachable" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    both = SchemaRegistryConfig(url=url, basic_auth_user_info=SecretStr("alice:hunter2"))
    with pytest.raises(ConfigError) as invalid:
        SchemaRegistry(both)
    assert "hunter2" not in str(invalid.value)
