"""Security settings: TLS and SASL keys reach every client, their secrets are never shown, and failures they
cause are fatal with the setting to fix."""

from __future__ import annotations

import logging
from pathlib import Path
from textwrap import dedent

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from connector.cli import app
from connector.config import load_config, redacted
from core.errors import ConfigError, FatalError, classify, is_retriable
from core.kafka import kafka_settings
from core.logs import ScrubbingFilter, scrub
from schemas.registry import registry_client

pytestmark = pytest.mark.unit

SECRETS = {
    "SOURCE_PASSWORD": "src-Pa55-1",
    "TARGET_PASSWORD": "tgt-Pa55-2",
    "KAFKA_PASSWORD": "kafka-Pa55-3",
    "KEY_PASSWORD": "key-Pa55-4",
    "REGISTRY_USER_INFO": "cdc:reg-Pa55-5",
    "REGISTRY_TOKEN": "tok-Pa55-6",
}
ENV = {**SECRETS, "CA": "/etc/cdc/ca.pem"}
SECURE = """\
name: secure
kafka:
  bootstrap_servers: 127.0.0.1:9094
  security_protocol: SASL_SSL
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: cdc
  sasl_password: ${KAFKA_PASSWORD}
  ssl_ca_location: ${CA}
  ssl_certificate_location: /etc/cdc/client.pem
  ssl_key_location: /etc/cdc/client.key
  ssl_key_password: ${KEY_PASSWORD}
schema_registry:
  url: https://127.0.0.1:8081/apis/ccompat/v7
  basic_auth_user_info: ${REGISTRY_USER_INFO}
  ssl_ca_location: ${CA}
source:
  dsn: >-
    host=127.0.0.1 dbname=source user=cdc_replicator password=${SOURCE_PASSWORD}
    sslmode=verify-full sslrootcert=${CA}
  topic_prefix: secure
  slot:
    name: cdc_secure
  publication:
    name: cdc_secure
    mode: existing
sink:
  dsn: postgresql://cdc_sink:${TARGET_PASSWORD}@127.0.0.1/target?sslmode=verify-full&sslrootcert=${CA}
  topics_regex: '^secure\\..*'
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secure.yaml"
    path.write_text(dedent(text), encoding="utf-8")
    return path


def assert_no_secret(text: str) -> None:
    for name, secret in SECRETS.items():
        assert secret not in text, name
    assert "reg-Pa55-5" not in text


def test_kafka_security_keys_reach_librdkafka(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SECURE), env=ENV)
    settings = kafka_settings(config.kafka)
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl.username"] == "cdc"
    assert settings["sasl.password"] == SECRETS["KAFKA_PASSWORD"]
    assert settings["ssl.ca.location"] == "/etc/cdc/ca.pem"
    assert settings["ssl.key.password"] == SECRETS["KEY_PASSWORD"]


def test_plaintext_kafka_settings_stay_as_they_were(tmp_path: Path) -> None:
    text = "name: plain\nkafka:\n  bootstrap_servers: h:9092\n  properties:\n    linger.ms: 5\n"
    text += "schema_registry:\n  url: http://h/apis/ccompat/v7\nsink:\n  dsn: x\n  topics: [t]\n"
    config = load_config(write(tmp_path, text), env=ENV)
    assert kafka_settings(config.kafka) == {"bootstrap.servers": "h:9092", "linger.ms": 5}


def test_properties_override_the_security_keys(tmp_path: Path) -> None:
    text = SECURE.replace("  ssl_key_password: ${KEY_PASSWORD}\n", "  properties:\n    sasl.username: other\n")
    config = load_config(write(tmp_path, text), env=ENV)
    assert kafka_settings(config.kafka)["sasl.username"] == "other"


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("  sasl_password: ${KAFKA_PASSWORD}\n", "", "sasl_password"),
        ("security_protocol: SASL_SSL", "security_protocol: PLAINTEXT", "security_protocol"),
        ("security_protocol: SASL_SSL", "security_protocol: SASL_TLS", "kafka.security_protocol"),
        ("  ssl_ca_location: ${CA}\n", "  bearer_auth_token: ${REGISTRY_TOKEN}\n", "not both"),
    ],
)
def test_security_mistakes_are_config_errors_without_secrets(tmp_path: Path, old: str, new: str, named: str) -> None:
    assert old in SECURE
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SECURE.replace(old, new)), env=ENV)
    assert named in str(caught.value)
    assert_no_secret(str(caught.value))


def test_registry_credentials_reach_the_client(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SECURE), env=ENV)
    settings = config.schema_registry.client_settings()
    assert settings["basic.auth.user.info"] == SECRETS["REGISTRY_USER_INFO"]
    assert settings["ssl.ca.location"] == "/etc/cdc/ca.pem"
    bearer = SECURE.replace("basic_auth_user_info: ${REGISTRY_USER_INFO}", "bearer_auth_token: ${REGISTRY_TOKEN}")
    token_config = load_config(write(tmp_path, bearer), env=ENV).schema_registry
    settings = token_config.client_settings()
    assert settings["bearer.auth.token"] == SECRETS["REGISTRY_TOKEN"]
    assert "basic.auth.user.info" not in settings
    client = registry_client(token_config.model_copy(update={"ssl_ca_location": None}))
    client.close()


def test_every_secret_is_redacted_in_config_dumps(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SECURE), env=ENV)
    shown = str(redacted(config))
    assert_no_secret(shown)
    assert "SCRAM-SHA-512" in shown and "/etc/cdc/ca.pem" in shown
    assert_no_secret(repr(config))
    assert_no_secret(str(config))


def test_config_show_never_prints_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, SECURE)
    for args in (["config", "show", str(path)], ["--debug", "config", "show", str(path)]):
        result = CliRunner().invoke(app, args, env=ENV)
        assert result.exit_code == 0, result.output
        assert_no_secret(result.output)
        assert '"sasl_username": "cdc"' in result.output


def test_log_scrubbing_covers_the_new_secrets() -> None:
    lines = [
        f"settings sasl.password={SECRETS['KAFKA_PASSWORD']}",
        f"sasl_password: {SECRETS['KAFKA_PASSWORD']}",
        f"ssl_key_password={SECRETS['KEY_PASSWORD']}",
        f"bearer.auth.token={SECRETS['REGISTRY_TOKEN']}",
        f"bearer_auth_token: {SECRETS['REGISTRY_TOKEN']}",
        f"Authorization: Bearer {SECRETS['REGISTRY_TOKEN']}",
        f"basic_auth_user_info={SECRETS['REGISTRY_USER_INFO']}",
        f"host=h sslpassword={SECRETS['KEY_PASSWORD']} sslmode=verify-full",
    ]
    for line in lines:
        assert_no_secret(scrub(line))
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "connect %s", (SECURE_DSN,), None)
    assert ScrubbingFilter().filter(record)
    assert_no_secret(record.getMessage())


SECURE_DSN = f"postgresql://cdc_sink:{SECRETS['TARGET_PASSWORD']}@127.0.0.1/target?sslmode=verify-full"


def _kafka(code: int, text: str) -> KafkaException:
    return KafkaException(KafkaError(code, text))


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (
            _kafka(
                KafkaError._AUTHENTICATION,
                "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during "
                "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            ),
            "kafka.sasl_password",
        ),
        (
            _kafka(
                KafkaError._SSL,
                "sasl_ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate "
                "verify failed: broker certificate could not be verified",
            ),
            "kafka.ssl_ca_location",
        ),
        (
            _kafka(
                KafkaError._TRANSPORT,
                "sasl_ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by "
                "peer: connecting to a PLAINTEXT broker listener?",
            ),
            "kafka.security_protocol",
        ),
        (
            _kafka(
                KafkaError._INVALID_ARG,
                "Failed to create producer: ssl.ca.location failed: error:05880020:x509 certificate routines::BIO lib",
            ),
            "kafka.ssl_ca_location",
        ),
        (
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: root certificate file '
                '"/etc/cdc/ca.pem" does not exist'
            ),
            "sslrootcert",
        ),
        (
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: SSL error: certificate '
                "verify failed"
            ),
            "sslrootcert",
        ),
        (
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  pg_hba.conf '
                'rejects connection for host "127.0.0.1", user "cdc_sink", database "target", no encryption'
            ),
            "pg_hba.conf",
        ),
    ],
)
def test_security_failures_are_fatal_and_name_the_fix(error: Exception, fix: str) -> None:
    assert not is_retriable(error)
    classified = classify(error)
    assert isinstance(classified, FatalError) and not classified.retriable
    assert fix in str(classified)
    assert "\n" not in str(classified)


def test_an_unreachable_broker_stays_retriable() -> None:
    error = _kafka(KafkaError._TRANSPORT, "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed")
    assert is_retriable(error)
    assert classify(error).retriable
