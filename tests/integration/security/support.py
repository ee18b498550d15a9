"""Helpers of the security tests: the admin connection, configs/secure.yaml for one test, `cdc` as a child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.support.examples import REPO_ROOT

SECRET_KEYS = (
    "CDC_SECURE_SOURCE_PASSWORD",
    "CDC_SECURE_TARGET_PASSWORD",
    "CDC_SECURE_ADMIN_PASSWORD",
    "CDC_SECURE_KAFKA_PASSWORD",
    "CDC_SECURE_REGISTRY_USER_INFO",
)


def admin(env: dict[str, str], database: str) -> psycopg.Connection:
    dsn = env["CDC_SECURE_ADMIN_DSN"].replace("dbname=source", f"dbname={database}")
    return psycopg.connect(dsn, password=env["CDC_SECURE_ADMIN_PASSWORD"], autocommit=True)


def secrets_of(env: dict[str, str]) -> list[str]:
    values = [env[key] for key in SECRET_KEYS]
    return [*values, env["CDC_SECURE_REGISTRY_USER_INFO"].partition(":")[2]]


def write_config(path: Path, captured: dict[str, str], port: int, change: Callable[[dict[str, Any]], None]) -> None:
    """configs/secure.yaml for this test's table, slot, publication and topics, with `change` applied."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "secure.yaml").read_text(encoding="utf-8"))
    name = captured["name"]
    config["name"] = name
    config["source"]["topic_prefix"] = name
    config["source"]["slot"]["name"] = name
    config["source"]["publication"]["name"] = name
    config["source"]["heartbeat"] = {"interval_s": 1}
    config["source"]["status_interval_s"] = 1
    config["sink"]["topics_regex"] = f"^{name}\\..*"
    config["sink"]["batch"] = {"max_records": 500, "max_wait_ms": 100}
    config["server"]["port"] = port
    config["retry"] = {"give_up_after_s": 600}  # a security mistake must stop it long before this
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML


def cdc(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    child = {k: v for k, v in os.environ.items() if k != "PGPASSFILE"}  # the stack's superuser entry: not ours
    child.update(env)
    command = [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, *args]
    if log is None:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child)
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child)
