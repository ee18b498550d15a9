"""The Kafka cluster section of a config and the client settings every Kafka client is built from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from core.settings import Section

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


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
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="How clients talk to the brokers: `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or `SASL_SSL` "
        "(SASL authentication over TLS). See docs/security.md.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="SASL mechanism with `SASL_*` protocols: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (from `${VAR}`; redacted wherever the config is shown)."
    )
    ssl_ca_location: str | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates (with `SSL`/`SASL_SSL`); unset: "
        "the system's trust store.",
    )
    ssl_certificate_location: str | None = Field(None, description="PEM client certificate, for mutual TLS.")
    ssl_key_location: str | None = Field(None, description="PEM private key of the client certificate.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of an encrypted `ssl_key_location`.")
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka properties (tuning, other security settings); they override the keys "
        "above. Keys naming a password, secret or token are redacted wherever the config is shown.",
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaConfig:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs `sasl_mechanism`, `sasl_username` and "
                "`sasl_password`"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError("`sasl_*` keys need `security_protocol: SASL_SSL` (or SASL_PLAINTEXT)")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if not tls and (self.ssl_ca_location or self.ssl_certificate_location or self.ssl_key_location):
            raise ValueError("`ssl_*` keys need `security_protocol: SSL` or `SASL_SSL`")
        return self


def kafka_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings common to producers, consumers and admin clients: servers, security, user properties.

    The result holds credentials: never log it.
    """
    settings: dict[str, Any] = {"bootstrap.servers": config.bootstrap_servers}
    if config.security_protocol != "PLAINTEXT":
        settings["security.protocol"] = config.security_protocol
    optional: dict[str, str | SecretStr | None] = {
        "sasl.mechanism": config.sasl_mechanism,
        "sasl.username": config.sasl_username,
        "sasl.password": config.sasl_password,
        "ssl.ca.location": config.ssl_ca_location,
        "ssl.certificate.location": config.ssl_certificate_location,
        "ssl.key.location": config.ssl_key_location,
        "ssl.key.password": config.ssl_key_password,
    }
    for key, value in optional.items():
        if value is not None:
            settings[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
    settings.update(config.properties)
    return settings
