"""A server certificate that has expired, with verification on: `cdc run` stops at once naming the expiry and the
server as what to fix (not the client's CA setting, which libpq and librdkafka would blame), exit 1, nothing
written, no secret in the output.

The expired certificate is made here by the secure stack's CA for the server's own key (valid in January 2020).
PostgreSQL is switched to it by a configuration reload (it reloads its TLS files on SIGHUP) for one test and
switched back afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from core.errors import kafka_security_error
from core.tls_probe import not_after_of
from tests.integration.pipeline_support import free_port, stop_connector
from tests.integration.security.support import admin, cdc, secrets_of, write_config

pytestmark = pytest.mark.integration

_CA_CONFIG = """[ca]
default_ca = expired
[expired]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
[anything]
commonName = supplied
[server]
subjectAltName = IP:127.0.0.1,DNS:localhost
extendedKeyUsage = serverAuth
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def expired_cert(secure_env: dict[str, str]) -> Iterator[Path]:
    """A certificate for the stack's server key, signed by its CA, valid from 2020-01-01 to 2020-02-01; in a
    directory the PostgreSQL server's OS user can read."""
    secure = Path(secure_env["CDC_SECURE_CA_FILE"]).parent
    directory = Path(tempfile.mkdtemp(prefix="cdc-expired-cert-"))
    try:
        directory.chmod(0o755)
        (directory / "ca.cnf").write_text(_CA_CONFIG, encoding="ascii")
        (directory / "index.txt").write_text("", encoding="ascii")
        (directory / "serial").write_text("01\n", encoding="ascii")
        _openssl("req", "-new", "-key", str(secure / "server.key"), "-subj", "/CN=127.0.0.1", "-out", "expired.csr",
                 cwd=directory)  # fmt: skip
        _openssl(
            "ca", "-batch", "-config", "ca.cnf", "-cert", str(secure / "ca.pem"), "-keyfile", str(secure / "ca.key"),
            "-in", "expired.csr", "-out", "expired.pem", "-startdate", "20200101000000Z",
            "-enddate", "20200201000000Z", "-extensions", "server", "-notext",
            cwd=directory,
        )  # fmt: skip
        (directory / "expired.pem").chmod(0o644)
        yield directory / "expired.pem"
    finally:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


def test_not_after_is_read_from_the_certificate(expired_cert: Path) -> None:
    der = ssl.PEM_cert_to_DER_cert(expired_cert.read_text(encoding="ascii"))
    assert not_after_of(der) == datetime(2020, 2, 1, tzinfo=UTC)


@pytest.fixture
def postgres_serving(secure_env: dict[str, str], captured: dict[str, str]) -> Iterator[Callable[[Path], None]]:
    """Switches the stack's PostgreSQL to another certificate file until the test ends. The admin connection is
    opened before, so it can switch back while new TLS connections fail."""
    conn = admin(secure_env, "postgres")

    def serve(certificate: Path) -> None:
        conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{certificate}'")  # a path we made: no quoting needed
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the postmaster reloads asynchronously; a connection before that still gets the old one

    try:
        yield serve
    finally:
        conn.execute("ALTER SYSTEM RESET ssl_cert_file")
        conn.execute("SELECT pg_reload_conf()")
        conn.close()
        time.sleep(0.5)


def test_expired_postgres_certificate_is_named(
    secure_env: dict[str, str],
    captured: dict[str, str],
    postgres_serving: Callable[[Path], None],
    expired_cert: Path,
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "secure.yaml"
    write_config(config_path, captured, free_port(), lambda config: None)
    postgres_serving(expired_cert)
    process = cdc(secure_env, "run", str(config_path))
    try:
        output = process.communicate(timeout=90)[0].decode(errors="replace")
    finally:
        stop_connector(process)
    assert process.returncode == 1, output
    assert "the server's certificate expired on 2020-02-01 00:00 UTC (certificate has expired)" in output, output
    assert "renew the server's certificate on the server side" in output, output
    for secret in secrets_of(secure_env):
        assert secret not in output
    postgres_serving(Path("cdc-server.crt"))
    with admin(secure_env, "target") as conn:
        written = conn.execute("SELECT to_regclass(%s)", (f"{captured['schema']}.{captured['table']}",)).fetchone()
    assert written == (None,), "the sink wrote the table"


def test_expired_kafka_certificate_is_named(secure_env: dict[str, str], expired_cert: Path) -> None:
    """librdkafka's own report of a TLS listener serving the expired certificate (a bare TLS server: what the
    client rejects is the handshake, before any Kafka request), classified with the client's settings."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(expired_cert, Path(secure_env["CDC_SECURE_CA_FILE"]).parent / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(5)
                with contextlib.suppress(OSError):  # the client gives up on our certificate: the point of the test
                    context.wrap_socket(client, server_side=True).close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    errors: list[KafkaError] = []
    settings = {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SSL",
        "ssl.ca.location": secure_env["CDC_SECURE_CA_FILE"],
        "error_cb": errors.append,
    }
    producer = Producer(settings)
    try:
        deadline = time.monotonic() + 30
        while not any(e.code() == KafkaError._TRANSPORT for e in errors) and time.monotonic() < deadline:
            producer.poll(0.2)
        transport = [e for e in errors if e.code() == KafkaError._TRANSPORT]
        assert transport, [e.str() for e in errors]
        assert "certificate verify failed" in transport[0].str()
        without_settings = kafka_security_error(transport[0])  # what `is_retriable` sees: fatal, not retried
        named = kafka_security_error(transport[0], settings)  # the server must still be there to be asked
    finally:
        done.set()
        server.join(timeout=10)
        listener.close()
    assert without_settings is not None and "kafka.ssl_ca_location" in str(without_settings)
    assert named is not None
    assert "the server's certificate expired on 2020-02-01 00:00 UTC" in named.message
    assert named.hint is not None and "renew the brokers' certificates" in named.hint
