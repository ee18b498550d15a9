"""The Kafka cluster section of a config and the client settings every Kafka client is built from."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from core.settings import Section


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


def kafka_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings common to producers, consumers and admin clients: the servers and the user's properties."""
    settings: dict[str, Any] = {"bootstrap.servers": config.bootstrap_servers}
    settings.update(config.properties)
    return settings
