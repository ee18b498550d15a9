"""Kafka Connect with Debezium's connectors, as a plain local process: what the compatibility tests run.

The jars come from Maven Central once (cached in `~/.m2`) and are laid out under `<home>/connect/`: `libs/`
(the Connect runtime with a log4j2 binding) and `plugins/<plugin>/<plugin>/` (one directory per plugin, so a
worker's `plugin.path` names only the plugins it needs: Connect scans every jar on that path at start, which
takes tens of seconds under load). A `ConnectWorker` runs one standalone worker (`ConnectStandalone`) with its
own REST port and offsets file, and is ready once every connector it runs and each of their tasks is RUNNING.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from core.errors import StackError
from devstack import jvm, processes
from devstack.maven import run_maven
from devstack.ports import HOST, free_ports
from devstack.processes import ProcessRecord

CONNECT_VERSION = "4.3.1"
DEBEZIUM_VERSION = "3.6.0.Final"
AVRO_CONVERTER_VERSION = "2.6.13.Final"
_RUNTIME_POM = "connect-pom.xml"
_CONVERTER_POM = "connect-converter-pom.xml"
_LOG_CONFIG = "connect-log4j2.properties"
_MARKER = ".complete"
# What a complete install holds; a cache written for other versions or another layout is fetched again.
_LAYOUT = 2
_INSTALL_ID = (
    f"connect {CONNECT_VERSION}, debezium {DEBEZIUM_VERSION}, apicurio converter {AVRO_CONVERTER_VERSION}, "
    f"layout {_LAYOUT}"
)

AVRO_CONVERTER_CLASS = "io.apicurio.registry.utils.converter.AvroConverter"
POSTGRES_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JDBC_SINK_CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
_CCOMPAT_PATH = "/apis/ccompat/"
_APICURIO_V2_PATH = "/apis/registry/v2"


class Plugin(StrEnum):
    """The connector plugins an install holds; each value is its directory under `plugins/`."""

    POSTGRES = "debezium-connector-postgres"
    JDBC_SINK = "debezium-connector-jdbc"
    AVRO_CONVERTER = "apicurio-avro-converter"


# Debezium's plugin tarballs as Maven copies them (`<artifactId>-<version>-plugin.tar.gz`).
_TARBALLS = {
    Plugin.POSTGRES: f"debezium-connector-postgres-{DEBEZIUM_VERSION}-plugin.tar.gz",
    Plugin.JDBC_SINK: f"debezium-connector-jdbc-{DEBEZIUM_VERSION}-plugin.tar.gz",
}


def _packaged(name: str) -> str:
    return resources.files("devstack").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class ConnectInstall:
    """Where an install's runtime jars and plugin directories are."""

    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    def plugin_path(self, plugin: Plugin) -> Path:
        """The `plugin.path` entry holding exactly this plugin (as its one subdirectory)."""
        return self.root / "plugins" / plugin.value

    @property
    def log_config(self) -> Path:
        return self.root / "log4j2.properties"


def ensure_install(home: Path) -> ConnectInstall:
    """`<home>/connect` with the Connect runtime and every `Plugin`; Maven runs only when they are not there yet."""
    install = ConnectInstall(home / "connect")
    marker = install.root / _MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == _INSTALL_ID:
        return install
    root = install.root
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    download = root / "download"
    for stale in (install.libs, root / "plugins", download):
        shutil.rmtree(stale, ignore_errors=True)
    download.mkdir()
    runtime_pom = root / _RUNTIME_POM
    runtime_pom.write_text(_packaged(_RUNTIME_POM), encoding="utf-8")
    run_maven(
        [
            "-f",
            str(runtime_pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={download}",
            "-DincludeScope=runtime",
        ],
        what=f"Kafka Connect {CONNECT_VERSION} and Debezium {DEBEZIUM_VERSION}",
    )
    install.libs.mkdir()
    for jar in download.glob("*.jar"):
        jar.rename(install.libs / jar.name)
    for plugin, tarball in _TARBALLS.items():
        _unpack_plugin(download / tarball, install.plugin_path(plugin) / plugin.value)
    converter_pom = root / _CONVERTER_POM
    converter_pom.write_text(_packaged(_CONVERTER_POM), encoding="utf-8")
    converter_dir = install.plugin_path(Plugin.AVRO_CONVERTER) / Plugin.AVRO_CONVERTER.value
    run_maven(
        [
            "-f",
            str(converter_pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={converter_dir}",
            "-DincludeScope=runtime",
        ],
        what=f"Apicurio's Avro converter {AVRO_CONVERTER_VERSION}",
    )
    _write_service_manifest(converter_dir, "org.apache.kafka.connect.storage.Converter", [AVRO_CONVERTER_CLASS])
    install.log_config.write_text(_packaged(_LOG_CONFIG), encoding="utf-8")
    shutil.rmtree(download)
    marker.write_text(_INSTALL_ID + "\n", encoding="utf-8")
    return install


def _unpack_plugin(archive: Path, target: Path) -> None:
    """Unpack a plugin tarball so that `target` holds its jars (the tarball's one top directory, if it has one)."""
    if not archive.is_file():
        raise StackError(f"Maven did not deliver {archive.name}", hint=f"see {archive.parent}")
    staging = target.parent / ".unpack"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths, links leaving the directory and device files.
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(f"cannot unpack {archive.name}: {exc}", hint=f"delete {archive.parent.parent}") from None
    entries = list(staging.iterdir())
    source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
    source.rename(target)
    shutil.rmtree(staging, ignore_errors=True)


def _write_service_manifest(plugin_dir: Path, interface: str, classes: Sequence[str]) -> None:
    """A jar holding the ServiceLoader manifest a plugin lacks, as Kafka's `connect-plugin-path sync-manifests` writes.

    With manifests for every plugin the worker finds them with `plugin.discovery=service_load`, skipping the
    reflective scan of every class on the plugin path (over ten seconds of each start here). Apicurio's converter
    ships none; Debezium's connectors and Connect's own plugins do.
    """
    with zipfile.ZipFile(plugin_dir / "cdc-service-manifests.jar", "w") as jar:
        jar.writestr(f"META-INF/services/{interface}", "".join(name + "\n" for name in classes))


def apicurio_v2_url(registry_url: str) -> str:
    """Apicurio's v2 API (what its 2.x converter speaks) on the server whose ccompat URL is `registry_url`."""
    parts = urlsplit(registry_url)
    at = parts.path.find(_CCOMPAT_PATH)
    if at < 0:
        raise StackError(
            f"cannot derive Apicurio's v2 API from {registry_url}",
            hint=f"expected a Confluent-compatible API URL ending in {_CCOMPAT_PATH}v7",
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path[:at] + _APICURIO_V2_PATH, "", ""))


def avro_converter_settings(prefix: str, registry_url: str) -> dict[str, str]:
    """Apicurio's Avro converter in Confluent wire format with the registry's content ids as schema ids.

    Those ids are the ones the Confluent-compatible API hands out, so records written by either side are read
    by the other. `prefix` is `key.converter` or `value.converter`.
    """
    settings = {
        "": AVRO_CONVERTER_CLASS,
        ".apicurio.registry.url": apicurio_v2_url(registry_url),
        ".apicurio.registry.auto-register": "true",
        ".apicurio.registry.as-confluent": "true",
        ".apicurio.registry.use-id": "contentId",
        ".apicurio.registry.headers.enabled": "false",
    }
    return {prefix + key: value for key, value in settings.items()}


def worker_properties(
    *, bootstrap: str, rest_port: int, offsets_file: Path, plugin_path: Iterable[Path], registry_url: str
) -> dict[str, str]:
    """A standalone worker's settings; its default converters are Avro against `registry_url`."""
    return {
        "bootstrap.servers": bootstrap,
        "listeners": f"http://{HOST}:{rest_port}",
        "rest.advertised.host.name": HOST,
        "rest.advertised.port": str(rest_port),
        "offset.storage.file.filename": str(offsets_file),
        # Offsets reach the file within a second, so a stopped worker resumes close to where it was.
        "offset.flush.interval.ms": "1000",
        "plugin.path": ",".join(str(path) for path in plugin_path),
        # Every plugin here has ServiceLoader manifests (see `_write_service_manifest`): no reflective scan.
        "plugin.discovery": "service_load",
        **avro_converter_settings("key.converter", registry_url),
        **avro_converter_settings("value.converter", registry_url),
    }


def _properties_text(settings: Mapping[str, str]) -> str:
    # Java properties: backslashes and the separators in keys need escaping; our values hold none of the others.
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n")

    def escape_key(text: str) -> str:
        return escape(text).replace("=", "\\=").replace(":", "\\:").replace(" ", "\\ ")

    return "".join(f"{escape_key(key)}={escape(value)}\n" for key, value in settings.items())


def jdbc_connection_settings(dsn: str) -> dict[str, str]:
    """`connection.url` / `.username` / `.password` of Debezium's JDBC sink for a libpq DSN (URL or key=value).

    Only host, port and database go into the URL; the password stays out of it (and out of logs that print the
    URL), as its own setting.
    """
    params: dict[str, Any] = conninfo_to_dict(dsn)
    if not params.get("dbname"):
        raise StackError(f"the DSN names no database: {_without_password(params)}")
    host, port = str(params.get("host") or HOST), str(params.get("port") or 5432)
    settings = {
        "connection.url": f"jdbc:postgresql://{host}:{port}/{quote(str(params['dbname']), safe='')}",
        "connection.username": str(params.get("user") or "postgres"),
    }
    if params.get("password"):
        settings["connection.password"] = str(params["password"])
    return settings


def _without_password(params: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items() if key != "password")


def postgres_source_settings(
    dsn: str,
    registry_url: str,
    *,
    topic_prefix: str,
    tables: Sequence[str],
    slot: str,
    publication: str,
    **extra: str,
) -> dict[str, str]:
    """Debezium's PostgreSQL connector on `dsn` over pgoutput, Avro keys and values; `extra` adds or overrides."""
    params: dict[str, Any] = conninfo_to_dict(dsn)
    if not params.get("dbname"):
        raise StackError(f"the DSN names no database: {_without_password(params)}")
    settings = {
        "connector.class": POSTGRES_CONNECTOR_CLASS,
        "tasks.max": "1",
        "database.hostname": str(params.get("host") or HOST),
        "database.port": str(params.get("port") or 5432),
        "database.user": str(params.get("user") or "postgres"),
        "database.dbname": str(params["dbname"]),
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "topic.prefix": topic_prefix,
        "snapshot.mode": "initial",
        "schema.name.adjustment.mode": "avro",
        **avro_converter_settings("key.converter", registry_url),
        **avro_converter_settings("value.converter", registry_url),
    }
    if params.get("password"):
        settings["database.password"] = str(params["password"])
    return {**settings, **extra}


def drop_slot_and_publication(dsn: str, slot: str, publication: str, *, timeout: float = 30.0) -> None:
    """Remove what Debezium's PostgreSQL connector leaves in the source: its slot stays behind when it stops (dropped
    once the walsender let go of it) and so does the publication it created."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is None:
                break
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                break
            if time.monotonic() >= deadline:
                raise StackError(f"slot {slot} still active {timeout:.0f}s after its connector stopped")
            time.sleep(0.2)
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))


def jdbc_sink_settings(dsn: str, registry_url: str, *, topics: Sequence[str], **extra: str) -> dict[str, str]:
    """Debezium's JDBC sink applying `topics` to the database of `dsn`, as a Debezium user would configure it.

    Upserts keyed by the record key, deletes (and tombstones) applied, tables created and widened from the
    records' schemas, each table named after the `source` block's table (`collection.name.format`), keys and
    values read by Apicurio's Avro converter in Confluent wire format. `extra` adds or overrides settings (a
    benchmark's `dialect.postgres.unnest.insert.enabled`, `batch.size`, ...).
    """
    if not topics:
        raise StackError("the JDBC sink needs at least one topic")
    settings = {
        "connector.class": JDBC_SINK_CONNECTOR_CLASS,
        "tasks.max": "1",
        "topics": ",".join(topics),
        **jdbc_connection_settings(dsn),
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "schema.evolution": "basic",
        "collection.name.format": "${source.table}",
        **avro_converter_settings("key.converter", registry_url),
        **avro_converter_settings("value.converter", registry_url),
    }
    return {**settings, **extra}


def plugin_of(connector_class: str) -> Plugin:
    """The plugin a connector class comes from."""
    known = {POSTGRES_CONNECTOR_CLASS: Plugin.POSTGRES, JDBC_SINK_CONNECTOR_CLASS: Plugin.JDBC_SINK}
    try:
        return known[connector_class]
    except KeyError:
        raise StackError(f"no plugin of this stack provides connector class {connector_class}") from None


class ConnectWorker:
    """One Kafka Connect standalone worker running the given connectors; a context manager that stops it.

    `connectors` maps each connector's name to its settings (`connector.class` required; `name` is added).
    The worker's plugin path holds the Avro converter and the plugins of these connectors only.
    """

    def __init__(
        self,
        install: ConnectInstall,
        workdir: Path,
        *,
        bootstrap: str,
        registry_url: str,
        connectors: Mapping[str, Mapping[str, str]],
        heap: Sequence[str] = ("-Xms256m", "-Xmx2g"),
    ) -> None:
        if not connectors:
            raise StackError("a Connect worker needs at least one connector")
        self.install = install
        self.workdir = workdir
        self.log = workdir / "connect.log"
        self._bootstrap = bootstrap
        self._registry_url = registry_url
        self._connectors = {name: {**settings, "name": name} for name, settings in connectors.items()}
        self._heap = list(heap)
        self._record: ProcessRecord | None = None
        self.rest_port = 0

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def pid(self) -> int | None:
        """The worker's JVM process while it runs (a benchmark reads its CPU time and memory)."""
        return self._record.pid if self._record is not None else None

    def start(self, *, timeout: float = 180.0) -> None:
        """Start the worker and wait until each connector and all its tasks are RUNNING."""
        java = jvm.require_java(17, f"Kafka Connect {CONNECT_VERSION}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.rest_port,) = free_ports(1)
        plugins = [Plugin.AVRO_CONVERTER, *{plugin_of(c["connector.class"]) for c in self._connectors.values()}]
        worker = self.workdir / "worker.properties"
        worker.write_text(
            _properties_text(
                worker_properties(
                    bootstrap=self._bootstrap,
                    rest_port=self.rest_port,
                    offsets_file=self.workdir / "offsets.dat",
                    plugin_path=[self.install.plugin_path(plugin) for plugin in plugins],
                    registry_url=self._registry_url,
                )
            ),
            encoding="utf-8",
        )
        connector_files = []
        for name, settings in self._connectors.items():
            path = self.workdir / f"connector-{name}.properties"
            path.write_text(_properties_text(settings), encoding="utf-8")
            connector_files.append(str(path))
        argv = [
            java.path,
            *self._heap,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.install.log_config}",
            "-cp",
            f"{self.install.libs}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(worker),
            *connector_files,
        ]
        self._record = processes.start(
            "kafka-connect", argv, log=self.log, cwd=self.workdir, ports={"rest": self.rest_port}
        )
        try:
            self.wait_running(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def status(self, connector: str) -> dict[str, Any] | None:
        """`GET /connectors/<name>/status`, or None while the REST API does not answer or knows no such connector."""
        try:
            with urllib.request.urlopen(f"{self.rest_url}/connectors/{connector}/status", timeout=5) as response:  # noqa: S310 - our own http URL
                body = json.loads(response.read())
        except (OSError, ValueError):  # urllib's HTTPError (404 before the connector exists) is an OSError
            return None
        return body if isinstance(body, dict) else None

    def wait_running(self, *, timeout: float = 180.0) -> None:
        """Wait until every connector and each of its tasks is RUNNING; a StackError with the log tail if not."""
        deadline = time.monotonic() + timeout
        pending = list(self._connectors)
        while pending:
            record = self._require_record()
            if not processes.is_running(record):
                raise self.error(f"Kafka Connect exited (code {processes.exit_code(record)}) before it ran")
            status = self.status(pending[0])
            if status is not None:
                failed = _failed_part(status)
                if failed is not None:
                    raise self.error(f"connector {pending[0]} failed: {failed}")
                if _all_running(status):
                    pending.pop(0)
                    continue
            if time.monotonic() >= deadline:
                state = json.dumps(status) if status is not None else "no status from the REST API"
                raise self.error(f"connector {pending[0]} not RUNNING within {timeout:.0f}s ({state})")
            time.sleep(0.25)

    def failure(self) -> str | None:
        """Why the worker no longer does its work (it exited, or a connector or task FAILED); None while it does."""
        record = self._require_record()
        if not processes.is_running(record):
            return f"Kafka Connect exited (code {processes.exit_code(record)})"
        for name in self._connectors:
            status = self.status(name)
            failed = _failed_part(status) if status is not None else None
            if failed is not None:
                return f"connector {name} failed: {failed}"
        return None

    def raise_if_failed(self) -> None:
        """A StackError with the log tail if `failure()` has something to say."""
        failed = self.failure()
        if failed is not None:
            raise self.error(failed)

    def stop(self) -> None:
        if self._record is not None:
            processes.stop(self._record, timeout=30.0)
            self._record = None

    def _require_record(self) -> ProcessRecord:
        if self._record is None:
            raise StackError("the Connect worker is not started")
        return self._record

    def error(self, message: str) -> StackError:
        """A StackError saying `message`, with the end of the worker's log."""
        tail = "\n".join(processes.tail(self.log, 25))
        return StackError(f"{message}\n--- last lines of {self.log} ---\n{tail}", hint=f"see {self.log}")

    def __enter__(self) -> ConnectWorker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_jdbc_sink(
    install: ConnectInstall,
    workdir: Path,
    *,
    bootstrap: str,
    registry_url: str,
    dsn: str,
    topics: Sequence[str],
    name: str = "jdbc-sink",
    extra: Mapping[str, str] | None = None,
    heap: Sequence[str] = ("-Xms256m", "-Xmx2g"),
    timeout: float = 180.0,
) -> ConnectWorker:
    """A started worker running Debezium's JDBC sink (`jdbc_sink_settings`) on `topics` into `dsn`'s database.

    The caller stops it (`stop()`, or use the worker as a context manager after `start` has run here).
    """
    settings = jdbc_sink_settings(dsn, registry_url, topics=topics, **dict(extra or {}))
    worker = ConnectWorker(
        install, workdir, bootstrap=bootstrap, registry_url=registry_url, connectors={name: settings}, heap=heap
    )
    worker.start(timeout=timeout)
    return worker


def count_rows(dsn: str, table: sql.Composable) -> int | None:
    """`count(*)` of `table` (a `sql.Identifier`), or None while the sink has not created it yet."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        try:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return int(row[0]) if row is not None else 0


def wait_for_rows(
    worker: ConnectWorker,
    dsn: str,
    table: sql.Composable,
    count: int,
    *,
    timeout: float = 300.0,
    interval: float = 0.5,
) -> float:
    """Wait until `table` holds at least `count` rows; the seconds it took.

    Fails at once (StackError with the worker's log tail) when the worker exits or its connector or a task
    FAILED (Debezium's JDBC sink kills its task on a record it cannot write), and after `timeout` otherwise.
    Counting rows rather than consumer lag: the JDBC sink commits no offsets for records it skipped.
    """
    started = time.monotonic()
    deadline = started + timeout
    seen: int | None = None
    while True:
        seen = count_rows(dsn, table)
        if seen is not None and seen >= count:
            return time.monotonic() - started
        worker.raise_if_failed()
        if time.monotonic() >= deadline:
            have = "no table yet" if seen is None else f"{seen} rows"
            raise worker.error(f"{table.as_string()} did not reach {count} rows within {timeout:.0f}s ({have})")
        time.sleep(interval)


def _all_running(status: Mapping[str, Any]) -> bool:
    tasks = status.get("tasks") or []
    return (
        status.get("connector", {}).get("state") == "RUNNING"
        and bool(tasks)
        and all(task.get("state") == "RUNNING" for task in tasks)
    )


def _failed_part(status: Mapping[str, Any]) -> str | None:
    """The first line of the trace of the connector or a task that FAILED, if any did, and its innermost cause.

    Connect wraps what went wrong (`Tolerance exceeded in error handler`, `JDBC sink connector failure`): the last
    `Caused by:` line is the converter's or the sink's own message.
    """
    parts = [("connector", status.get("connector", {}))]
    parts += [(f"task {task.get('id')}", task) for task in status.get("tasks") or []]
    for label, part in parts:
        if part.get("state") == "FAILED":
            trace = str(part.get("trace") or "no trace").strip().splitlines()
            causes = [line.removeprefix("Caused by: ") for line in trace if line.startswith("Caused by: ")]
            cause = f" (caused by {causes[-1]})" if causes else ""
            return f"{label}: {trace[0] if trace else 'no trace'}{cause}"
    return None
