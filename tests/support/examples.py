"""The repository's example configs and docs, and the environment their `${VAR}` placeholders take in unit tests."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {
    "CDC_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "CDC_SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081/apis/ccompat/v7",
    "CDC_SOURCE_DSN": "postgresql://app:hunter2@127.0.0.1/source",
    "CDC_TARGET_DSN": "postgresql://app:hunter2@127.0.0.1/target",
    # `cdc dev up --secure` (configs/secure.yaml)
    "CDC_SECURE_KAFKA_BOOTSTRAP": "127.0.0.1:9094",
    "CDC_SECURE_KAFKA_MECHANISM": "SCRAM-SHA-512",
    "CDC_SECURE_KAFKA_USER": "cdc",
    "CDC_SECURE_KAFKA_PASSWORD": "hunter2",
    "CDC_SECURE_CA_FILE": "/etc/cdc/ca.pem",
    "CDC_SECURE_REGISTRY_URL": "http://127.0.0.1:8081/apis/ccompat/v7",
    "CDC_SECURE_REGISTRY_USER_INFO": "cdc:hunter2",
    "CDC_SECURE_SOURCE_DSN": "host=127.0.0.1 dbname=source user=cdc_replicator sslmode=verify-full",
    "CDC_SECURE_SOURCE_PASSWORD": "hunter2",
    "CDC_SECURE_TARGET_DSN": "host=127.0.0.1 dbname=target user=cdc_sink sslmode=verify-full",
    "CDC_SECURE_TARGET_PASSWORD": "hunter2",
    "CDC_SECURE_PUBLICATION": "cdc_app",
    "CDC_SECURE_SCHEMA": "app",
}
