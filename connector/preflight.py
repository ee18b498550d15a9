"""Checks of the services every connector needs, shared by `cdc validate` and `cdc status`."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connector.config import ConnectorConfig
from core.checks import Problem
from core.errors import ConnectorError
from core.kafka import kafka_settings
from schemas.registry import SchemaRegistry


def check_kafka(config: ConnectorConfig, timeout_s: float | None = None) -> tuple[list[Problem], dict[str, Any]]:
    if timeout_s is None:
        timeout_s = config.kafka.request_timeout_s
    try:
        # This check reports an unreachable broker itself, as one line; librdkafka's retry chatter adds nothing.
        metadata = AdminClient({**kafka_settings(config.kafka), "log_level": 0}).list_topics(timeout=timeout_s)
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
    """The registry's subjects, or the problem reaching it, in the words `cdc run` would use."""
    try:
        with SchemaRegistry(config.schema_registry) as registry:
            subjects = registry.subjects()
    except ConnectorError as exc:
        return [Problem("schema_registry", exc.message, exc.hint or "check `schema_registry.url`")], []
    return [], subjects
