"""Permanent failures end `cdc run`: refused credentials, unknown roles or databases at once, unreachable services
after the retry budget; always a non-zero exit and one line naming the cause and the fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.integration.pipeline_support import drop_replication_state, drop_tables, free_port, source_section
from tests.support.helpers import http_get
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

# Far below the default budget, far above one attempt: what must end is the retrying, not a slow first try.
DEADLINE_S = 60


def _config(path: Path, name: str, stack: Stack, *, source_dsn: str | None = None, sink_dsn: str | None = None,
            registry_url: str | None = None, port: int = 0, give_up_after_s: float = 3,
            kafka: str | None = None) -> Path:  # fmt: skip
    config: dict[str, Any] = {
        "name": name,
        "kafka": {"bootstrap_servers": kafka or stack.kafka_bootstrap},
        "schema_registry": {"url": registry_url or stack.registry_url},
        "server": {"port": port},
        "retry": {"give_up_after_s": give_up_after_s},
    }
    if source_dsn is not None:
        config["source"] = {**source_section(name, f"{name}_t"), "dsn": source_dsn}
    if sink_dsn is not None:
        config["sink"] = {"dsn": sink_dsn, "topics": [f"{name}.public.t"]}
    path.write_text(json.dumps(config))
    return path


def _start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _run(config: Path) -> tuple[int, str, float]:
    """Exit code, the `error:` line and how long it took."""
    started = time.monotonic()
    process = _start(config)
    try:
        _, stderr = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"`cdc run` still ran after {DEADLINE_S}s; it logged:\n{stderr[-3000:]}") from None
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return process.returncode, errors[0], time.monotonic() - started


@pytest.mark.parametrize("side", ["source", "sink"])
@pytest.mark.parametrize(
    ("change", "cause", "fix"),
    [
        ({"dbname": "no_such_db"}, 'database "no_such_db" does not exist', "fix the database name in"),
        ({"user": "no_such_role"}, 'role "no_such_role" does not exist', "fix the user in"),
    ],
)
def test_a_refused_connection_ends_run_at_once(
    stack: Stack, unique_name: Callable[[str], str], tmp_path: Path, side: str, change: dict[str, str], cause: str,
    fix: str,
) -> None:  # fmt: skip
    name = unique_name("refused")
    base = stack.source_dsn if side == "source" else stack.target_dsn
    dsn = make_conninfo(base, **change)
    # A budget of an hour: only classifying the refusal as permanent can end this run in time.
    config = _config(tmp_path / "c.yaml", name, stack, give_up_after_s=3600, **{f"{side}_dsn": dsn})
    code, error, _ = _run(config)
    assert code == 1
    assert cause in error and fix in error and f"{side}.dsn" in error


def test_an_unreachable_database_is_retried_for_the_budget_then_ends_run(
    stack: Stack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    closed = free_port()
    dsn = make_conninfo(stack.source_dsn, host="127.0.0.1", port=str(closed))
    port = free_port()
    config = _config(tmp_path / "c.yaml", unique_name("closed"), stack, source_dsn=dsn, port=port, give_up_after_s=6)
    process = _start(config)
    try:
        deadline = time.monotonic() + 5
        health = (0, b"")
        while time.monotonic() < deadline and health[0] != 503:
            time.sleep(0.2)
            health = http_get(port, "/healthz")
        # Red while it retries, with the reason.
        assert health[0] == 503 and b"cannot reach the source database" in health[1], health
        _, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert re.search(r"gave up after \d+s of retrying: cannot reach the source database: .*refused", errors[0])
    assert "Is the server running" not in stderr  # libpq's second line stays out
    assert "source.dsn" in errors[0] and "retry.give_up_after_s" in errors[0]


def test_sigterm_while_retrying_exits_non_zero(stack: Stack, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    dsn = make_conninfo(stack.target_dsn, host="127.0.0.1", port=str(free_port()))
    port = free_port()
    config = _config(tmp_path / "c.yaml", unique_name("term"), stack, sink_dsn=dsn, port=port, give_up_after_s=3600)
    process = _start(config)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and http_get(port, "/healthz")[0] != 503:
            time.sleep(0.2)
        assert http_get(port, "/healthz")[0] == 503
        process.terminate()
        _, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, stderr
    assert "error: stopped while the sink could not make progress: cannot reach the destination database" in stderr


def _run_with_registry(stack: Stack, name: str, tmp_path: Path, registry: str) -> tuple[int, str]:
    """`cdc run` of a one-row table against `registry`: its exit code and error output."""
    table = f"{name}_t"
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(table)))
    config = _config(tmp_path / "c.yaml", name, stack, source_dsn=stack.source_dsn, registry_url=registry)
    try:
        code, error, _ = _run(config)
    finally:
        drop_replication_state(stack.source_dsn, name, name)
        drop_tables(stack.source_dsn, sql.Identifier(table))
    return code, error


def test_a_registry_url_without_its_path_says_so(
    stack: Stack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    code, error = _run_with_registry(stack, unique_name("nopath"), tmp_path, stack.registry_url.split("/apis/")[0])
    assert code == 1
    assert "HTTP 404" in error and "/apis/ccompat/v7" in error and "None" not in error


def test_an_unreachable_registry_is_retried_for_the_budget_then_ends_run(
    stack: Stack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    registry = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    code, error = _run_with_registry(stack, unique_name("noreg"), tmp_path, registry)
    assert code == 1
    assert re.search(r"gave up after \d+s of retrying: schema registry at http://127\.0\.0\.1:\d+/apis/ccompat/v7 is "
                     r"unreachable", error), error  # fmt: skip
    assert "schema_registry.url" in error


def test_an_unreachable_kafka_ends_the_sink_after_the_budget(
    stack: Stack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    kafka = f"127.0.0.1:{free_port()}"
    config = _config(tmp_path / "c.yaml", unique_name("nokafka"), stack, sink_dsn=stack.target_dsn, kafka=kafka)
    code, error, _ = _run(config)
    assert code == 1
    assert re.search(rf"gave up after \d+s of retrying: cannot reach Kafka at {re.escape(kafka)}: ", error), error
    assert "kafka.bootstrap_servers" in error
