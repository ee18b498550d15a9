"""The repository's example configs and docs, and the environment their `${VAR}` placeholders take in unit tests."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {
    "CDC_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "CDC_SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081/apis/ccompat/v7",
    "CDC_SOURCE_DSN": "postgresql://app:hunter2@127.0.0.1/source",
    "CDC_TARGET_DSN": "postgresql://app:hunter2@127.0.0.1/target",
}
