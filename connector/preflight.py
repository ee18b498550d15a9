"""Checks of the services every connector needs, shared by `cdc validate` and `cdc status`."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connector.checks import Problem
from connector.config import ConnectorConfig


def kafka_settings(config: ConnectorConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"bootstrap.servers": config.kafka.bootstrap_servers}
    settings.update(config.kafka.properties)
    return settings


def registry_client(config: ConnectorConfig) -> SchemaRegistryClient:
    return SchemaRegistryClient(config.schema_registry.client_settings())


def check_kafka(config: ConnectorConfig, timeout_s: float = 10.0) -> tuple[list[Problem], dict[str, Any]]:
    try:
        # This check reports an unreachable broker itself, as one line; librdkafka's retry chatter adds nothing.
        metadata = AdminClient({**kafka_settings(config), "log_level": 0}).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return [
            Problem(
                "kafka",
                f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc.args[0].str() if exc.args else exc}",
                "check kafka.bootstrap_servers and that the broker runs (`cdc dev status` for the local stack)",
            )
        ], {}
    return [], {"brokers": len(metadata.brokers), "topics": sorted(metadata.topics)}


def check_registry(config: ConnectorConfig) -> tuple[list[Problem], list[str]]:
    try:
        subjects = registry_client(config).get_subjects()
    except (SchemaRegistryError, OSError, Exception) as exc:  # httpx raises its own transport errors
        return [
            Problem(
                "schema_registry",
                f"cannot reach the schema registry at {config.schema_registry.url}: {type(exc).__name__}",
                "check schema_registry.url (Apicurio: http://HOST:PORT/apis/ccompat/v7) and that it runs",
            )
        ], []
    return [], list(subjects)
