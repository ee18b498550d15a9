"""PostgreSQL for the local stack: Debian's binaries, a private cluster under `<home>/postgres`.

The cluster is a development one: trust authentication on 127.0.0.1 and no fsync. Databases: `source` and
`target` for the connector, `registry` for the schema registry's storage.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from core.errors import StackError
from devstack.ports import HOST

REGISTRY_DATABASE = "registry"
DATABASES = ("source", "target", REGISTRY_DATABASE)
SUPERUSER = "postgres"
STOP_SIGNAL = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to disconnect
INSTALL_COMMAND = "apt-get update && apt-get install -y postgresql"

_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    "max_connections": "300",
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}
_HBA = f"""# cdc dev stack: development only, no passwords.
local   all          all                      trust
host    all          all          {HOST}/32   trust
local   replication  all                      trust
host    replication  all          {HOST}/32   trust
"""
# Unix socket paths are limited to 107 bytes; longer homes fall back to TCP only.
_SOCKET_PATH_LIMIT = 100


@dataclass(frozen=True, slots=True)
class OsUser:
    name: str
    uid: int
    gid: int


def dsn(port: int, database: str) -> str:
    return f"postgresql://{SUPERUSER}@{HOST}:{port}/{database}"


def jdbc_url(port: int, database: str) -> str:
    return f"jdbc:postgresql://{HOST}:{port}/{database}"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", Path(path).parent.name))


def find_bindir() -> Path | None:
    """The directory holding `initdb` and `postgres`: `pg_config --bindir`, else the newest Debian install."""
    dirs: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            dirs.append(result.stdout.strip())
    dirs.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True))
    for candidate in dirs:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    return None


def require_bindir(*, install: bool = True) -> Path:
    """The server binaries; installed from Debian's packages when missing and running as root."""
    bindir = find_bindir()
    if bindir is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        result = subprocess.run(
            ["sh", "-c", INSTALL_COMMAND],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["?"])[-1]
            raise StackError(f"installing PostgreSQL failed: {last}", hint=f"run `{INSTALL_COMMAND}` by hand")
        bindir = find_bindir()
    if bindir is None:
        raise StackError("PostgreSQL server binaries (initdb, postgres) not found", hint=f"run `{INSTALL_COMMAND}`")
    return bindir


def server_user() -> OsUser | None:
    """The OS user the server runs as: None (ourselves) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "cdc"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return OsUser(name, entry.pw_uid, entry.pw_gid)
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", "cdc"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            "PostgreSQL cannot run as root and creating the OS user `cdc` failed: " + result.stderr.strip(),
            hint="create a non-root user named postgres or cdc",
        )
    entry = pwd.getpwnam("cdc")
    return OsUser("cdc", entry.pw_uid, entry.pw_gid)


def _run_as(user: OsUser | None, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        user=None if user is None else user.uid,
        group=None if user is None else user.gid,
        extra_groups=None if user is None else [],
    )


def _chown_tree(path: Path, user: OsUser) -> None:
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def _check_reachable(path: Path, user: OsUser) -> None:
    result = _run_as(user, ["/bin/sh", "-c", 'test -w "$1" -a -x "$1"', "sh", str(path)])
    if result.returncode != 0:
        raise StackError(
            f"the OS user `{user.name}` that runs PostgreSQL cannot reach {path}",
            hint="make its parent directories traversable (chmod o+x) or choose another --home",
        )


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    cwd: Path
    user: OsUser | None
    data_dir: Path


def prepare(home: Path, port: int) -> Launch:
    """initdb on first use, (re)write the settings, and say how to start the server."""
    bindir = require_bindir()
    user = server_user()
    base = home / "postgres"
    data_dir = base / "data"
    socket_dir = base / "run"
    base.mkdir(parents=True, exist_ok=True)
    socket_dir.mkdir(exist_ok=True)
    if user is not None:
        _chown_tree(base, user)
        _check_reachable(base, user)
    if not (data_dir / "PG_VERSION").exists():
        initdb = [str(bindir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]
        result = _run_as(user, [*initdb, "--locale=C", "--no-sync"], cwd=base)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["?"])[-1]
            raise StackError(f"initdb failed: {last}", hint=f"delete {data_dir} and retry")
    version = (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    major = bindir.parent.name
    if major.isdigit() and major != version:
        raise StackError(
            f"{data_dir} was made by PostgreSQL {version} but the binaries are {major}",
            hint="run `cdc dev down --clean` to start from an empty cluster",
        )
    conf = "\n".join(f"{key} = {value}" for key, value in _SETTINGS.items())
    (data_dir / "cdc-dev.conf").write_text("# written by `cdc dev up`\n" + conf + "\n", encoding="utf-8")
    main_conf = data_dir / "postgresql.conf"
    if "include_if_exists = 'cdc-dev.conf'" not in main_conf.read_text(encoding="utf-8"):
        with open(main_conf, "a", encoding="utf-8") as fh:
            fh.write("\ninclude_if_exists = 'cdc-dev.conf'\n")
    (data_dir / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
    if user is not None:
        for name in ("cdc-dev.conf", "pg_hba.conf"):
            os.chown(data_dir / name, user.uid, user.gid)
    sockets = str(socket_dir) if len(str(socket_dir)) < _SOCKET_PATH_LIMIT else ""
    argv = [str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port), "-c", f"unix_socket_directories={sockets}"]
    return Launch(argv, base, user, data_dir)


def postmaster_pid(data_dir: Path, port: int) -> int | None:
    """The pid of the server running on `data_dir` and `port`, from its `postmaster.pid`, if it still runs.

    The file stays behind after a crash, so the pid must also be a process whose command line names `data_dir`.
    """
    try:
        lines = (data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, file_port = int(lines[0]), int(lines[3])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if file_port != port or os.fsencode(str(data_dir)) not in argv:
        return None
    return pid


def probe(port: int, *, timeout: int = 3) -> None:
    """Raise unless the server accepts a connection and answers `select 1`."""
    with psycopg.connect(dsn(port, "postgres"), connect_timeout=timeout, autocommit=True) as conn:
        conn.execute("select 1")


def ensure_databases(port: int) -> None:
    with psycopg.connect(dsn(port, "postgres"), connect_timeout=5, autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
        for name in DATABASES:
            if name not in existing:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def probe_databases(port: int, *, timeout: int = 3) -> None:
    """Raise unless `select 1` works on every database of the stack."""
    for name in DATABASES:
        with psycopg.connect(dsn(port, name), connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("select 1")
