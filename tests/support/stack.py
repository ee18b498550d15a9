"""Which services the tests use, in this order:

1. `CDC_TEST_SOURCE_DSN`, `CDC_TEST_TARGET_DSN`, `CDC_TEST_KAFKA_BOOTSTRAP`, `CDC_TEST_SCHEMA_REGISTRY_URL` (all four);
2. a live stack described by `.cdc/dev.env` at the repository root (or `$CDC_TEST_ENV_FILE`) whose services answer;
3. a stack of our own (`devstack`) on free ports in a temporary directory, stopped at the end.

Anything that prevents all three is a failure with its reason, never a skip. `CDC_TEST_BACKEND=processes`
goes straight to 3; `CDC_TEST_BACKEND=containers` uses Docker containers instead (tests/support/containers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient

from connector.config_loader import read_env_file
from devstack import control
from devstack.env_file import Endpoints
from devstack.ports import Ports
from tests.support.examples import REPO_ROOT

TEST_ENV = {
    "source_dsn": "CDC_TEST_SOURCE_DSN",
    "target_dsn": "CDC_TEST_TARGET_DSN",
    "kafka_bootstrap": "CDC_TEST_KAFKA_BOOTSTRAP",
    "registry_url": "CDC_TEST_SCHEMA_REGISTRY_URL",
}
ENV_FILE_VAR = "CDC_TEST_ENV_FILE"
BACKEND_VAR = "CDC_TEST_BACKEND"


class StackUnavailable(Exception):
    """The services the tests need cannot be reached or started."""


@dataclass(frozen=True, slots=True)
class Stack:
    """Endpoints of the real services the integration tests run against."""

    source_dsn: str
    target_dsn: str
    kafka_bootstrap: str
    registry_url: str
    origin: str = ""

    @classmethod
    def from_endpoints(cls, endpoints: Endpoints, origin: str) -> Stack:
        return cls(
            endpoints.source_dsn, endpoints.target_dsn, endpoints.kafka_bootstrap, endpoints.registry_url, origin
        )


def check(stack: Stack, timeout: float = 5.0) -> None:
    """Raise with the reason unless every service answers a real request."""
    for name, dsn in (("source", stack.source_dsn), ("target", stack.target_dsn)):
        try:
            with psycopg.connect(dsn, connect_timeout=int(timeout), autocommit=True) as conn:
                conn.execute("select 1")
        except psycopg.Error as exc:
            raise StackUnavailable(f"{name} database does not answer: {str(exc).strip()}") from None
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap, "log_level": 0})
    try:
        if not admin.list_topics(timeout=timeout).brokers:
            raise StackUnavailable(f"Kafka at {stack.kafka_bootstrap} lists no brokers")
    except Exception as exc:  # librdkafka raises KafkaException (transport) or others
        if isinstance(exc, StackUnavailable):
            raise
        raise StackUnavailable(f"Kafka at {stack.kafka_bootstrap} does not answer: {exc}") from None
    try:
        with urllib.request.urlopen(stack.registry_url + "/subjects", timeout=timeout) as response:
            json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise StackUnavailable(f"registry at {stack.registry_url} does not answer: {exc}") from None


def from_test_env(env: Mapping[str, str]) -> Stack | None:
    """Option 1; None when none of the variables is set, a failure when only some are."""
    given = {field: env[var] for field, var in TEST_ENV.items() if env.get(var)}
    if not given:
        return None
    if len(given) < len(TEST_ENV):
        missing = [var for field, var in TEST_ENV.items() if field not in given]
        raise StackUnavailable(f"set all four CDC_TEST_* variables or none; missing: {', '.join(missing)}")
    stack = Stack(**given, origin="CDC_TEST_* variables")
    check(stack)
    return stack


def from_env_file(env: Mapping[str, str]) -> tuple[Stack | None, str]:
    """Option 2; (None, why not) when there is no env file or its services do not answer."""
    path = Path(env.get(ENV_FILE_VAR) or REPO_ROOT / ".cdc" / "dev.env")
    if not path.is_file():
        if env.get(ENV_FILE_VAR):
            raise StackUnavailable(f"{ENV_FILE_VAR} names {path}, which does not exist")
        return None, f"no {path}"
    endpoints = Endpoints.from_env(read_env_file(path))
    if endpoints is None:
        return None, f"{path} lacks some CDC_* endpoint"
    stack = Stack.from_endpoints(endpoints, origin=str(path))
    try:
        check(stack)
    except StackUnavailable as exc:
        return None, f"{path}: {exc}"
    return stack, ""


@contextmanager
def own_stack() -> Iterator[Stack]:
    """Option 3: start a stack on free ports in a temporary home; stop it and delete its files afterwards."""
    home = Path(tempfile.mkdtemp(prefix="cdc-test-stack-"))
    # PostgreSQL runs as a non-root OS user when we are root; it must reach its directory.
    home.chmod(0o755)
    try:
        endpoints = control.up(home, Ports.free())
    except Exception as exc:
        control.down(home)
        # The home stays: its logs/ tell why.
        raise StackUnavailable(f"could not start a stack in {home}: {exc}") from None
    try:
        yield Stack.from_endpoints(endpoints, origin=f"own stack in {home}")
    finally:
        control.down(home)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def resolve(env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """The stack the tests use (see the module docstring)."""
    environment = os.environ if env is None else env
    if environment.get(BACKEND_VAR) == "containers":
        from tests.support.containers import containers_stack

        with containers_stack() as in_containers:
            yield in_containers
        return
    if environment.get(BACKEND_VAR) == "processes":
        with own_stack() as forced:
            yield forced
        return
    stack = from_test_env(environment)
    if stack is not None:
        yield stack
        return
    stack, _ = from_env_file(environment)
    if stack is not None:
        yield stack
        return
    with own_stack() as started:
        yield started
