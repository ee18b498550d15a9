"""The optional testcontainers backend gives the same kind of stack as `cdc dev up`.

Skipped (with the reason) when no Docker engine answers or the `containers` extra is not installed.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from tests.support import consume_all, pg_connect
from tests.support.containers import INSTALL_HINT, containers_stack, docker_problem
from tests.support.stack import check

pytestmark = [pytest.mark.integration, pytest.mark.containers]


def test_containers_backend_answers_like_the_process_stack() -> None:
    problem = docker_problem()
    if problem is not None:
        pytest.skip(f"no Docker engine answers: {problem}")
    pytest.importorskip("testcontainers", reason=INSTALL_HINT)
    with containers_stack() as stack:
        check(stack)
        with pg_connect(stack.source_dsn) as conn:
            row = conn.execute("select current_setting('wal_level')").fetchone()
        assert row is not None and row[0] == "logical"
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        producer.produce("containers_smoke", key=b"k", value=b"v")
        assert producer.flush(30) == 0
        messages = consume_all(stack.kafka_bootstrap, "containers_smoke")
        assert [(m.key(), m.value()) for m in messages] == [(b"k", b"v")]
