"""Optional backend: the same services in Docker containers (testcontainers), for machines without the JDK.

Used only when asked (`CDC_TEST_BACKEND=containers`) or by its own test, and only when a Docker engine answers.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
from psycopg import sql

from tests.support.stack import Stack, StackUnavailable

POSTGRES_IMAGE = "postgres:16"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
REGISTRY_IMAGE = "apicurio/apicurio-registry:3.0.9"
INSTALL_HINT = "install the `containers` extra: pip install -e '.[containers]'"


def docker_problem() -> str | None:
    """Why Docker cannot be used here (None when `docker info` succeeds)."""
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return "the docker command is not installed"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30s"
    if result.returncode != 0:
        # The reason is on stderr (stdout holds the client's half of the report).
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return "`docker info` failed: " + (lines[0] if lines else f"exit code {result.returncode}")
    return None


@contextmanager
def containers_stack() -> Iterator[Stack]:
    problem = docker_problem()
    if problem is not None:
        raise StackUnavailable(problem)
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        raise StackUnavailable(INSTALL_HINT) from None
    with ExitStack() as stack:
        pg = stack.enter_context(
            PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="source").with_command(
                "postgres -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64 -c max_connections=300"
            )
        )
        kafka = stack.enter_context(KafkaContainer(KAFKA_IMAGE).with_kraft())
        registry = stack.enter_context(DockerContainer(REGISTRY_IMAGE).with_exposed_ports(8080))
        source_dsn = pg.get_connection_url(driver=None)
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier("target")))
        registry_url = (
            f"http://{registry.get_container_host_ip()}:{registry.get_exposed_port(8080)}/apis/ccompat/v7"
        )
        _wait_for_registry(registry_url)
        yield Stack(
            source_dsn=source_dsn,
            target_dsn=source_dsn.rsplit("/", 1)[0] + "/target",
            kafka_bootstrap=kafka.get_bootstrap_server(),
            registry_url=registry_url,
            origin="testcontainers",
        )


def _wait_for_registry(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/subjects", timeout=5) as response:
                json.loads(response.read())
                return
        except (OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise StackUnavailable(f"the registry container did not answer in {timeout:.0f}s: {exc}") from None
            time.sleep(1.0)
