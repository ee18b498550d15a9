"""The connector on the secured stack (`cdc dev up --secure`): TLS + SCRAM everywhere, least-privilege roles.

The whole pipeline runs with configs/secure.yaml; each security mistake (and a role lacking REPLICATION or
SELECT) stops `cdc run` at once with one line naming the setting or grant to fix (exit 1, nothing written, no
secret in the output), instead of retrying forever.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from core.tls_probe import speaks_tls
from tests.integration.pipeline_support import free_port, stop_connector, table_digest, wait_until
from tests.integration.security.support import admin, cdc, secrets_of, write_config
from tests.support.helpers import http_get

pytestmark = pytest.mark.integration

COLUMNS = ["id", "customer", "amount", "note"]


def test_pipeline_over_tls_and_scram_with_least_privilege_roles(
    secure_env: dict[str, str], captured: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    config_path = tmp_path / "secure.yaml"
    write_config(config_path, captured, port, lambda c: None)
    process = cdc(secure_env, "run", str(config_path), log=tmp_path / "cdc.log")
    schema, table = captured["schema"], captured["table"]
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 90, "/readyz", process)
        with admin(secure_env, "source") as conn:
            t = sql.Identifier(schema, table)
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'late ' || g, g FROM generate_series(101, 150) g").format(t))
            conn.execute(sql.SQL("UPDATE {} SET amount = amount + 1, note = 'updated' WHERE id % 10 = 0").format(t))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 7 = 0").format(t))
        source_dsn = secure_env["CDC_SECURE_ADMIN_DSN"] + f" password={secure_env['CDC_SECURE_ADMIN_PASSWORD']}"
        target_dsn = source_dsn.replace("dbname=source", "dbname=target")
        expected = table_digest(source_dsn, schema, table, COLUMNS)

        def target_matches() -> bool:
            try:
                return table_digest(target_dsn, schema, table, COLUMNS) == expected
            except psycopg.errors.UndefinedTable:
                return False

        wait_until(target_matches, 90, "the target to equal the source", process)
        with admin(secure_env, "postgres") as conn:
            sessions = conn.execute(
                "SELECT a.usename, a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                "WHERE a.usename IN ('cdc_replicator', 'cdc_sink')"
            ).fetchall()
        status_code, status_body = http_get(port, "/status")
        assert status_code == 200
        shown = cdc(secure_env, "status", str(config_path))
        status_out = shown.communicate(timeout=60)[0].decode(errors="replace")
        show = cdc(secure_env, "--debug", "config", "show", str(config_path))
        show_out = show.communicate(timeout=60)[0].decode(errors="replace")
        assert show.returncode == 0, show_out
    finally:
        stop_connector(process)
    log = (tmp_path / "cdc.log").read_text(errors="replace")
    for secret in secrets_of(secure_env):
        shown_where = {"log": log, "/status": status_body.decode(), "status": status_out, "config show": show_out}
        for where, text in shown_where.items():
            assert secret not in text, where
    # The connector's sessions were the least-privilege roles, all over TLS (the replication stream included).
    assert {(user, backend, ssl) for user, backend, ssl in sessions} == {
        ("cdc_replicator", "walsender", True),
        ("cdc_replicator", "client backend", True),
        ("cdc_sink", "client backend", True),
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value

    return change


def _plaintext_kafka(config: dict[str, Any]) -> None:
    """The SASL_SSL port kept, the client's TLS and SASL settings dropped: it speaks PLAINTEXT to a TLS listener."""
    kafka = config["kafka"]
    config["kafka"] = {k: v for k, v in kafka.items() if not k.startswith(("sasl_", "ssl_", "security_"))}


CASES = {
    "source wrong password": (
        _set("source.dsn", "${CDC_SECURE_SOURCE_DSN} password=wrong-password"),
        "check the user and password in `source.dsn`",
    ),
    "sink missing CA file": (
        _set(
            "sink.dsn",
            "${CDC_SECURE_TARGET_DSN} password=${CDC_SECURE_TARGET_PASSWORD} sslrootcert=/nonexistent/ca.pem",
        ),
        "sslrootcert",
    ),
    "source plaintext to the TLS-only port": (
        _set("source.dsn", "${CDC_SECURE_SOURCE_DSN} password=${CDC_SECURE_SOURCE_PASSWORD} sslmode=disable"),
        "pg_hba.conf",
    ),
    "kafka wrong password": (_set("kafka.sasl_password", "wrong-password"), "kafka.sasl_password"),
    "kafka CA missing": (_set("kafka.ssl_ca_location", None), "kafka.ssl_ca_location"),
    "kafka TLS to the plaintext port": (
        _set("kafka.bootstrap_servers", "${CDC_KAFKA_BOOTSTRAP}"),
        "plaintext listener",
    ),
    "kafka plaintext to the TLS port": (_plaintext_kafka, "kafka.security_protocol: SSL` or `SASL_SSL"),
    "kafka SASL without TLS to the TLS port": (
        lambda config: config["kafka"].update(security_protocol="SASL_PLAINTEXT", ssl_ca_location=None),
        "kafka.security_protocol: SASL_SSL`",
    ),
    "registry wrong password": (
        _set("schema_registry.basic_auth_user_info", "cdc:wrong-password"),
        "schema_registry.basic_auth_user_info",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_security_mistake_stops_at_once_naming_the_fix(
    secure_env: dict[str, str], captured: dict[str, str], tmp_path: Path, case: str
) -> None:
    change, fix = CASES[case]
    config_path = tmp_path / "secure.yaml"
    write_config(config_path, captured, free_port(), change)
    process = cdc(secure_env, "run", str(config_path))
    try:
        output = process.communicate(timeout=90)[0].decode(errors="replace")
    finally:
        stop_connector(process)
    assert process.returncode == 1, output
    assert fix in output, output
    for secret in [*secrets_of(secure_env), "wrong-password"]:
        assert secret not in output
    with admin(secure_env, "target") as conn:
        written = conn.execute("SELECT to_regclass(%s)", (f"{captured['schema']}.{captured['table']}",)).fetchone()
    assert written == (None,), "the sink wrote the table"


@pytest.mark.parametrize("lacking", ["REPLICATION", "SELECT"])
def test_a_role_lacking_a_privilege_is_told_the_grant(
    secure_env: dict[str, str], captured: dict[str, str], tmp_path: Path, lacking: str
) -> None:
    qualified = f"{captured['schema']}.{captured['table']}"
    t = sql.Identifier(captured["schema"], captured["table"])
    role, password = f"{captured['name']}_norepl", "role-Pa55-7"
    with admin(secure_env, "source") as conn:
        if lacking == "REPLICATION":
            create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            conn.execute(create.format(sql.Identifier(role), sql.Literal(password)))
            for grant in ("GRANT CONNECT ON DATABASE source TO {}", "GRANT USAGE ON SCHEMA app TO {}"):
                conn.execute(sql.SQL(grant).format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(t, sql.Identifier(role)))
            dsn = secure_env["CDC_SECURE_SOURCE_DSN"].replace("user=cdc_replicator", f"user={role}")
            change = _set("source.dsn", f"{dsn} password={password}")
            fix = f"ALTER ROLE {role} REPLICATION"
        else:
            conn.execute(sql.SQL("REVOKE SELECT ON {} FROM cdc_replicator").format(t))
            change, fix = (lambda config: None), f"GRANT SELECT ON {qualified}"
    config_path = tmp_path / "secure.yaml"
    write_config(config_path, captured, free_port(), change)
    process = cdc(secure_env, "run", str(config_path))
    try:
        output = process.communicate(timeout=90)[0].decode(errors="replace")
    finally:
        stop_connector(process)
        if lacking == "REPLICATION":
            with admin(secure_env, "source") as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert process.returncode == 1, output
    assert fix in output, output
    assert password not in output


def test_speaks_tls_tells_the_brokers_listeners_apart(secure_env: dict[str, str]) -> None:
    host, _, port = secure_env["CDC_SECURE_KAFKA_BOOTSTRAP"].rpartition(":")
    plain_host, _, plain_port = secure_env["CDC_KAFKA_BOOTSTRAP"].rpartition(":")
    assert speaks_tls(host, int(port))
    assert not speaks_tls(plain_host, int(plain_port))
    assert not speaks_tls("127.0.0.1", free_port())  # nothing listens: refused


def test_a_plaintext_client_finding_no_broker_keeps_retrying(
    secure_env: dict[str, str], captured: dict[str, str], tmp_path: Path
) -> None:
    """Only a port that answers TLS makes a plaintext client's failure fatal: a broker that is down is retried
    (here until a short retry budget runs out), as ever."""

    def down(config: dict[str, Any]) -> None:
        _plaintext_kafka(config)
        config["kafka"]["bootstrap_servers"] = f"127.0.0.1:{free_port()}"
        config["retry"] = {"give_up_after_s": 5}

    config_path = tmp_path / "secure.yaml"
    write_config(config_path, captured, free_port(), down)
    process = cdc(secure_env, "run", str(config_path))
    try:
        output = process.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        stop_connector(process)
    assert process.returncode == 1, output
    assert "gave up after" in output, output
    assert "retry.give_up_after_s: 5" in output, output
    assert "TLS listener" not in output, output
