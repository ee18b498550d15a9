"""The secured stack (`cdc dev up --secure`) for the security tests: TLS + SCRAM everywhere, least-privilege roles.

`CDC_TEST_SECURE_ENV_FILE` names the `dev.env` of a running secure stack to use; otherwise one is started here on
free ports in a temporary home and stopped afterwards. Never the shared plaintext stack: its services have no TLS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg import sql

from connector.config_loader import read_env_file
from devstack import control
from devstack.ports import Ports
from tests.integration.security.support import admin

ENV_FILE_VAR = "CDC_TEST_SECURE_ENV_FILE"


@pytest.fixture(scope="session")
def secure_env() -> Iterator[dict[str, str]]:
    """The `CDC_SECURE_*` endpoints and credentials of a running secure stack."""
    named = os.environ.get(ENV_FILE_VAR)
    if named:
        env = read_env_file(Path(named))
        if "CDC_SECURE_SOURCE_DSN" not in env:
            pytest.fail(f"{named} is not the env file of a `cdc dev up --secure` stack", pytrace=False)
        yield env
        return
    home = Path(tempfile.mkdtemp(prefix="cdc-secure-stack-"))
    home.chmod(0o755)  # PostgreSQL runs as a non-root OS user when we are root; it must reach its directory
    saved = os.environ.get("PGPASSFILE")
    try:
        try:
            endpoints = control.up(home, Ports.free(), secured=True)
        except Exception as exc:
            control.down(home)
            pytest.fail(f"could not start a secure stack in {home}: {exc}", pytrace=False)
        yield endpoints.as_env()
    finally:
        control.down(home)
        shutil.rmtree(home, ignore_errors=True)
        # `up` pointed this process's libpq at the stack's superuser password file.
        if saved is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = saved


@pytest.fixture
def captured(secure_env: dict[str, str], unique_name: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """A table of schema `app` with 100 rows, its own publication (made by the admin) and slot name."""
    name, table = unique_name("sec"), unique_name("orders")
    schema = secure_env["CDC_SECURE_SCHEMA"]
    t = sql.Identifier(schema, table)
    with admin(secure_env, "source") as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), note text)"
            ).format(t)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'customer ' || g, g * 1.5, 'note ' || g FROM generate_series(1, 100) g"
            ).format(t)
        )
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), t))
    yield {"name": name, "table": table, "schema": schema}
    with admin(secure_env, "source") as conn:
        for _ in range(50):
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
            if row is None or not row[0]:
                break
            conn.execute("SELECT pg_sleep(0.2)")
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (name,)
        )
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
        if conn.execute("SELECT to_regclass('cdc.source_state')").fetchone() != (None,):  # made by a source run
            conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (name,))
    with admin(secure_env, "target") as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
