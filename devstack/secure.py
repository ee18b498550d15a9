"""`cdc dev up --secure`: the local stack with TLS and passwords, for proving the connector's secured connections.

Everything lives under `<home>/secure`: a throwaway CA and a server certificate for 127.0.0.1 (made with Debian's
`openssl`), and the generated passwords (`passwords.env`, mode 0600). What changes against the plaintext stack:

- PostgreSQL: TLS on, `scram-sha-256` passwords for every TCP connection (`hostssl` only; plain TCP is rejected),
  the superuser's password set in single-user mode before the server starts. Roles: `cdc_replicator` (LOGIN
  REPLICATION, SELECT on schema `app` of database `source`, owner of schema `cdc` there, no superuser) and
  `cdc_sink` (owner of schemas `app` and `cdc` of database `target`, TEMPORARY there for its staging tables).
  The publication `cdc_app FOR TABLES IN SCHEMA app` is made by the superuser, so the source runs with
  `publication.mode: existing`.
- Kafka: a SASL_SSL listener (SCRAM-SHA-512, user `cdc`) beside the plaintext one; controller and inter-broker
  traffic stay plaintext on 127.0.0.1. Users are created by `kafka-storage format --add-scram`.
- Apicurio: HTTP basic auth from Quarkus' embedded user realm, every `/apis/*` path needing an authenticated user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from connector.config_loader import read_env_file
from core.errors import StackError
from devstack.ports import HOST

SECURE_DIR = "secure"
PASSWORDS_FILE = "passwords.env"
PGPASS_FILE = "pgpass"
REPLICATION_ROLE = "cdc_replicator"
SINK_ROLE = "cdc_sink"
KAFKA_USER = "cdc"
REGISTRY_USER = "cdc"
CAPTURE_SCHEMA = "app"
PUBLICATION = "cdc_app"
SCRAM_MECHANISM = "SCRAM-SHA-512"
CERT_DAYS = 30
_PASSWORD_NAMES = ("admin", "replicator", "sink", "kafka", "registry")


@dataclass(frozen=True, slots=True)
class Material:
    """The files and passwords of a secure stack."""

    directory: Path
    passwords: dict[str, str]

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def kafka_keystore(self) -> Path:
        return self.directory / "kafka-keystore.pem"

    @property
    def pgpass(self) -> Path:
        return self.directory / PGPASS_FILE


def is_secure(home: Path) -> bool:
    return (home / SECURE_DIR / PASSWORDS_FILE).is_file()


def _openssl(args: list[str], cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise StackError("openssl not found (needed for `cdc dev up --secure`)", hint="apt-get install -y openssl")
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise StackError(f"openssl {args[0]} failed: {last}")


def _make_certificates(directory: Path) -> None:
    _openssl(
        [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", str(CERT_DAYS), "-subj", "/CN=cdc dev CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        directory,
    )  # fmt: skip
    _openssl(
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={HOST}"],
        directory,
    )
    (directory / "server.ext").write_text(
        f"subjectAltName=IP:{HOST},DNS:localhost\nextendedKeyUsage=serverAuth\n", encoding="ascii"
    )
    _openssl(
        [
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", str(CERT_DAYS), "-extfile", "server.ext",
        ],
        directory,
    )  # fmt: skip
    # Kafka's PEM keystore: the (unencrypted PKCS#8) key followed by the certificate chain, in one file.
    key = (directory / "server.key").read_text(encoding="ascii")
    chain = (directory / "server.pem").read_text(encoding="ascii") + (directory / "ca.pem").read_text(encoding="ascii")
    (directory / "kafka-keystore.pem").write_text(key + chain, encoding="ascii")
    for name in ("ca.key", "server.key", "kafka-keystore.pem"):
        os.chmod(directory / name, 0o600)


def ensure_material(home: Path) -> Material:
    """The CA, the server certificate and the passwords, made on first use and kept afterwards."""
    directory = home / SECURE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if not (directory / "server.pem").is_file():
        _make_certificates(directory)
    passwords_file = directory / PASSWORDS_FILE
    if not passwords_file.is_file():
        lines = [f"{name}={secrets.token_hex(16)}" for name in _PASSWORD_NAMES]
        passwords_file.touch(mode=0o600)
        passwords_file.write_text("\n".join(lines) + "\n", encoding="ascii")
    return Material(directory, read_env_file(passwords_file))


def use_admin_password(material: Material, port: int) -> None:
    """Let this process's libpq connections as the superuser (probes, database and role setup) find its password.

    A passfile entry names the port and the user, so connections of the connector's roles are unaffected.
    """
    material.pgpass.write_text(f"{HOST}:{port}:*:postgres:{material.passwords['admin']}\n", encoding="ascii")
    os.chmod(material.pgpass, 0o600)
    os.environ["PGPASSFILE"] = str(material.pgpass)


# -- PostgreSQL -------------------------------------------------------------------------------------------------

_HBA = f"""# cdc dev stack, secure mode: TLS and scram-sha-256 for every TCP connection; plain TCP is refused.
local      all          all                             trust
hostssl    replication  {REPLICATION_ROLE}  {HOST}/32   scram-sha-256
hostssl    all          all                 {HOST}/32   scram-sha-256
hostnossl  all          all                 {HOST}/32   reject
hostnossl  replication  all                 {HOST}/32   reject
"""


def harden_postgres(material: Material, bindir: Path, data_dir: Path, uid: int | None, gid: int | None) -> None:
    """TLS settings, the scram-only pg_hba.conf and the superuser's password, before the server starts."""
    for source, name in ((material.server_cert, "cdc-server.crt"), (material.server_key, "cdc-server.key")):
        shutil.copyfile(source, data_dir / name)
        os.chmod(data_dir / name, 0o600)
    settings = {
        "ssl": "on",
        "ssl_cert_file": "'cdc-server.crt'",
        "ssl_key_file": "'cdc-server.key'",
        "password_encryption": "'scram-sha-256'",
    }
    conf = data_dir / "cdc-dev.conf"
    conf.write_text(
        conf.read_text(encoding="utf-8") + "".join(f"{key} = {value}\n" for key, value in settings.items()),
        encoding="utf-8",
    )
    (data_dir / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
    if uid is not None and gid is not None:
        for name in ("cdc-server.crt", "cdc-server.key", "cdc-dev.conf", "pg_hba.conf"):
            os.chown(data_dir / name, uid, gid)
    # Single-user mode: the server is not running yet, and no TCP login works before the password is set.
    statement = f"ALTER ROLE postgres PASSWORD '{material.passwords['admin']}'\n"
    result = subprocess.run(
        [str(bindir / "postgres"), "--single", "-D", str(data_dir), "postgres"],
        input=statement,
        capture_output=True,
        text=True,
        check=False,
        cwd=data_dir.parent,
        user=uid,
        group=gid,
        extra_groups=None if uid is None else [],
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise StackError(f"setting the PostgreSQL superuser's password failed: {last}")


def _ensure_role(conn: psycopg.Connection, role: str, password: str, *, replication: bool) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
    conn.execute(
        sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE {} PASSWORD {}").format(
            verb,
            sql.Identifier(role),
            sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
            sql.Literal(password),
        )
    )


def ensure_roles(material: Material, admin_dsn: str) -> None:
    """The connector's least-privilege roles, their schemas and the publication (idempotent)."""
    replicator, sink = sql.Identifier(REPLICATION_ROLE), sql.Identifier(SINK_ROLE)
    schema, cdc = sql.Identifier(CAPTURE_SCHEMA), sql.Identifier("cdc")
    with psycopg.connect(admin_dsn.format(database="postgres"), autocommit=True, connect_timeout=5) as conn:
        _ensure_role(conn, REPLICATION_ROLE, material.passwords["replicator"], replication=True)
        _ensure_role(conn, SINK_ROLE, material.passwords["sink"], replication=False)
        for database, role in (("source", replicator), ("target", sink)):
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role))
        # The sink stages each batch in a temporary table (ON COMMIT DELETE ROWS).
        conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE target TO {}").format(sink))
    with psycopg.connect(admin_dsn.format(database="source"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, replicator))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, replicator))
        conn.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(schema, replicator)
        )
        # The slot bookkeeping (cdc.source_state) lives in a schema the role owns: no CREATE on the database.
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(cdc, replicator))
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone() is None:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLES IN SCHEMA {}").format(sql.Identifier(PUBLICATION), schema)
            )
    with psycopg.connect(admin_dsn.format(database="target"), autocommit=True, connect_timeout=5) as conn:
        for name in (schema, cdc):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(name, sink))
            conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(name, sink))


# -- Kafka ------------------------------------------------------------------------------------------------------


def kafka_properties(material: Material, port: int, secure_port: int, controller_port: int) -> dict[str, str]:
    """Settings added to the broker's: a SASL_SSL listener with SCRAM beside the plaintext one."""
    return {
        "listeners": f"PLAINTEXT://{HOST}:{port},SASL_SSL://{HOST}:{secure_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},SASL_SSL://{HOST}:{secure_port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(material.kafka_keystore),
    }


def scram_format_args(material: Material) -> list[str]:
    """`kafka-storage format` arguments that create the SCRAM user with the storage."""
    return ["--add-scram", f"{SCRAM_MECHANISM}=[name={KAFKA_USER},password={material.passwords['kafka']}]"]


# -- Registry ---------------------------------------------------------------------------------------------------


def registry_properties(material: Material, jdbc_url: str) -> dict[str, str]:
    """Apicurio's runtime config: basic auth on the API, and its storage over TLS with the superuser's password."""
    return {
        "apicurio.datasource.url": f"{jdbc_url}?sslmode=verify-full&sslrootcert={material.ca}",
        "apicurio.datasource.password": material.passwords["admin"],
        "quarkus.http.auth.basic": "true",
        "quarkus.security.users.embedded.enabled": "true",
        "quarkus.security.users.embedded.plain-text": "true",
        f"quarkus.security.users.embedded.users.{REGISTRY_USER}": material.passwords["registry"],
        f"quarkus.security.users.embedded.roles.{REGISTRY_USER}": "sr-admin",
        "quarkus.http.auth.permission.api.paths": "/apis/*",
        "quarkus.http.auth.permission.api.policy": "authenticated",
    }


def write_registry_config(directory: Path, properties: dict[str, str] | None) -> None:
    """Quarkus reads `config/application.properties` under its working directory; removed for a plaintext stack."""
    path = directory / "config" / "application.properties"
    if properties is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()), encoding="utf-8")


def registry_basic_auth(material: Material) -> str:
    return f"{REGISTRY_USER}:{material.passwords['registry']}"


# -- dev.env ----------------------------------------------------------------------------------------------------


def env_entries(material: Material, pg_port: int, kafka_secure_port: int, registry_url: str) -> dict[str, str]:
    """The secure endpoints and credentials, under names distinct from the plaintext stack's."""
    # libpq keyword form: a config appends ` password=${...}` (any characters, no URL escaping).
    server = f"host={HOST} port={pg_port} sslmode=verify-full sslrootcert={material.ca}"
    return {
        "CDC_SECURE_CA_FILE": str(material.ca),
        "CDC_SECURE_SOURCE_DSN": f"{server} dbname=source user={REPLICATION_ROLE}",
        "CDC_SECURE_SOURCE_PASSWORD": material.passwords["replicator"],
        "CDC_SECURE_TARGET_DSN": f"{server} dbname=target user={SINK_ROLE}",
        "CDC_SECURE_TARGET_PASSWORD": material.passwords["sink"],
        "CDC_SECURE_ADMIN_DSN": f"{server} dbname=source user=postgres",
        "CDC_SECURE_ADMIN_PASSWORD": material.passwords["admin"],
        "CDC_SECURE_PUBLICATION": PUBLICATION,
        "CDC_SECURE_SCHEMA": CAPTURE_SCHEMA,
        "CDC_SECURE_KAFKA_BOOTSTRAP": f"{HOST}:{kafka_secure_port}",
        "CDC_SECURE_KAFKA_MECHANISM": SCRAM_MECHANISM,
        "CDC_SECURE_KAFKA_USER": KAFKA_USER,
        "CDC_SECURE_KAFKA_PASSWORD": material.passwords["kafka"],
        "CDC_SECURE_REGISTRY_URL": registry_url,
        "CDC_SECURE_REGISTRY_USER_INFO": registry_basic_auth(material),
    }
