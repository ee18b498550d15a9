"""`up`, `down` and `status` of the local stack: PostgreSQL, Apache Kafka, Apicurio Registry.

State lives in one directory (`home`): `pids.json` (what runs, with which ports), `dev.env` (the
endpoints, written once every service answers), `logs/`, and each service's files. `up` is
idempotent: a recorded process that still runs (same pid and start time) is kept, not restarted; a recorded
service that died is started again on its recorded ports, so `dev.env` and whatever reads it stay valid.
Whether a service is healthy is asked of the service itself (SQL, Kafka metadata, registry HTTP), never
inferred from a pid: PostgreSQL restarted with `pg_ctl restart` has a new pid and still serves.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from connector.config_loader import read_env_file
from core.errors import StackError
from devstack import kafka, mirror, postgres, processes, registry, secure
from devstack.env_file import ENV_FILE_NAME, Endpoints, write_env_file
from devstack.ports import Ports, is_free, is_listening, require_free
from devstack.processes import ProcessRecord

HOME_ENV = "CDC_HOME"
DEFAULT_HOME = ".cdc"
SERVICES = ("postgres", "kafka", "registry")
# What `up --regions 2` adds: region B's Kafka cluster and registry, and MirrorMaker 2 between the two clusters.
# The shared PostgreSQL (destination, registry storage) stands for a global database; see docs/active-active.md.
REGION_B_SERVICES = ("kafka_b", "registry_b", "mirrormaker")
ALL_SERVICES = SERVICES + REGION_B_SERVICES
LABELS = {
    "postgres": "PostgreSQL",
    "kafka": "Apache Kafka",
    "registry": "Apicurio Registry",
    "kafka_b": "Apache Kafka (B)",
    "registry_b": "Apicurio Registry (B)",
    "mirrormaker": "MirrorMaker 2",
}
REGISTRY_IN_MEMORY_NOTE = (
    "this registry was started before the stack stored schemas in PostgreSQL and keeps them in memory: "
    "run `cdc dev down` then `cdc dev up` to restart everything together with persistent storage"
)

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def resolve_home(home: Path | None = None) -> Path:
    """`--home`, else `$CDC_HOME`, else `.cdc` under the current directory."""
    if home is None:
        home = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)
    return home.expanduser().absolute()


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    ports: dict[str, int]
    detail: str
    log: str


def endpoints_for(ports: Ports, regions: int = 1) -> Endpoints:
    two = regions >= 2
    return Endpoints(
        source_dsn=postgres.dsn(ports.postgres, "source"),
        target_dsn=postgres.dsn(ports.postgres, "target"),
        kafka_bootstrap=kafka.bootstrap(ports.kafka),
        registry_url=registry.url(ports.registry),
        kafka_bootstrap_b=kafka.bootstrap(ports.kafka_b) if two else None,
        registry_url_b=registry.url(ports.registry_b) if two else None,
    )


def _mirror_ports(ports: Ports) -> dict[str, int]:
    # MirrorMaker listens on nothing: what it is recorded with are the clusters it joins (see `_probe`).
    return {"cluster_a": ports.kafka, "cluster_b": ports.kafka_b}


def _probe(name: str, ports: dict[str, int], timeout: float = 3.0, since: float | None = None) -> None:
    """Raise unless the service answers; `since` (epoch seconds): MirrorMaker must have mirrored after it."""
    if name == "postgres":
        postgres.probe(ports["postgres"], timeout=max(1, int(timeout)))
    elif name in ("kafka", "kafka_b"):
        if not is_listening(ports[name]):
            raise StackError("Kafka's port is not open yet")
        kafka.probe(ports[name], timeout=timeout)
    elif name == "mirrormaker":
        mirror.probe(
            kafka.bootstrap(ports["cluster_a"]), kafka.bootstrap(ports["cluster_b"]), timeout=timeout, since=since
        )
    else:
        registry.probe(ports[name], timeout=timeout)


def _listening_ports(record: ProcessRecord) -> dict[str, int]:
    return {} if record.name == "mirrormaker" else record.ports


def _is_healthy(name: str, ports: dict[str, int]) -> bool:
    try:
        _probe(name, ports)
    except Exception:  # any failure of a probe means "not healthy"
        return False
    return True


def _wait_healthy(record: ProcessRecord, timeout: float) -> None:
    """Poll the service's probe until it answers; fail early if its process ends."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while True:
        if not processes.is_running(record):
            code = processes.exit_code(record)
            raise _unhealthy(record, f"exited{'' if code is None else f' with code {code}'} while starting")
        try:
            # A restarted MirrorMaker answers only once it mirrored again: its old heartbeats are still fresh.
            started = record.info.get("started")
            _probe(record.name, record.ports, since=float(started) if started else None)
            return
        except Exception as exc:  # keep polling; the last error goes into the message
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() >= deadline:
            raise _unhealthy(record, f"did not answer within {timeout:.0f}s ({last_error})")
        time.sleep(1.0)


def _unhealthy(record: ProcessRecord, what: str) -> StackError:
    # The most recently written of the service's files tells why (a JVM that cannot start only writes stdout).
    files = [Path(record.log)] + ([Path(record.info["stdout"])] if record.info.get("stdout") else [])
    existing = [f for f in files if f.is_file() and f.stat().st_size > 0]
    log = max(existing, key=lambda f: f.stat().st_mtime) if existing else Path(record.log)
    lines = processes.tail(log, 10)
    return StackError(
        f"{LABELS[record.name]} {what}",
        hint=f"last lines of {log}: " + (" | ".join(lines) if lines else "(empty)"),
    )


def _foreign_stack(home: Path, records: dict[str, ProcessRecord]) -> Endpoints | None:
    """A stack described by a dev.env that `up` did not write here; never overwritten or stopped by us.

    When all its services answer it is used as it is (None when there is no such file). When only some
    answer, starting ours would clobber its dev.env, so that is an error.
    """
    env_file = home / ENV_FILE_NAME
    if records or not env_file.is_file():
        return None
    endpoints = Endpoints.from_env(read_env_file(env_file))
    if endpoints is None:
        return None
    answering = {name: _endpoint_answers(name, endpoints) for name in SERVICES}
    if all(answering.values()):
        return endpoints
    if any(answering.values()):
        raise StackError(
            f"{env_file} describes a stack that `cdc dev up` did not start here, and part of it still runs",
            hint="stop that stack, or choose another directory with --home / CDC_HOME",
        )
    return None


def _endpoint_answers(name: str, endpoints: Endpoints) -> bool:
    try:
        if name == "postgres":
            port = urlsplit(endpoints.source_dsn).port
            ports = {"postgres": port or 5432}
        elif name == "kafka":
            ports = {"kafka": int(endpoints.kafka_bootstrap.split(",")[0].rpartition(":")[2])}
        else:
            ports = {"registry": urlsplit(endpoints.registry_url).port or 80}
    except ValueError:
        return False
    return _is_healthy(name, ports)


def _effective_ports(requested: Ports, records: dict[str, ProcessRecord]) -> Ports:
    """The requested ports, except those of recorded services: they keep theirs, running or not."""
    kept: dict[str, int] = {}
    for record in records.values():
        kept.update(_listening_ports(record))
    return replace(requested, **kept).resolved()


def _current(record: ProcessRecord) -> ProcessRecord:
    """The record with the service's live pid: PostgreSQL restarted by `pg_ctl` runs under a new one."""
    if record.name != "postgres" or processes.is_running(record) or not record.info.get("data"):
        return record
    pid = postgres.postmaster_pid(Path(record.info["data"]), record.ports["postgres"])
    started = None if pid is None else processes.start_time_of(pid)
    if pid is None or started is None:
        return record
    return replace(record, pid=pid, start_time=started)


def _require_recorded_ports_free(record: ProcessRecord, home: Path) -> None:
    for port in _listening_ports(record).values():
        if not is_free(port):
            raise StackError(
                f"port {port}, recorded for {LABELS[record.name]} in {home / processes.PIDS_FILE_NAME}, "
                "is taken by another program",
                hint="stop that program, or run `cdc dev down` to forget the recorded ports",
            )


def recorded_regions(home: Path) -> int:
    """2 when `up --regions 2` started region B here (and `down` has not stopped it), else 1."""
    return 2 if any(name in REGION_B_SERVICES for name in processes.load_records(home)) else 1


def up(
    home: Path,
    requested: Ports,
    *,
    timeout: float = 180.0,
    echo: Echo = _quiet,
    regions: int = 1,
    secured: bool = False,
) -> Endpoints:
    """Start whatever is not running, wait until every service answers, write `dev.env` if it changed.

    A service recorded in `pids.json` keeps its recorded ports whatever `requested` says (`down` forgets them).
    `regions=2` adds region B (a second Kafka cluster and registry) and MirrorMaker 2 between the clusters; a
    home where region B was started keeps it on a plain `up`.
    `secured` (or a home made secure before) starts the stack of `devstack.secure`.
    """
    if regions not in (1, 2):
        raise StackError(f"the local stack runs one or two regions, not {regions}")
    records = processes.load_records(home)
    regions = max(regions, 2 if any(name in REGION_B_SERVICES for name in records) else 1)
    material = secure.ensure_material(home) if secured or secure.is_secure(home) else None
    foreign = _foreign_stack(home, records)
    if foreign is not None:
        echo(f"a stack that `cdc dev up` did not start answers at the endpoints in {home / ENV_FILE_NAME}: using it")
        return foreign
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    ports = _effective_ports(requested, records)
    if material is not None:
        secure.use_admin_password(material, ports.postgres)
    for name in SERVICES + (REGION_B_SERVICES if regions == 2 else ()):
        record = records.get(name)
        if record is not None and (current := _current(record)) != record:
            echo(f"{LABELS[name]}: runs under a new pid {current.pid} (was {record.pid})")
            record = records[name] = current
            processes.save_records(home, records)
        if record is not None and processes.is_running(record):
            echo(f"{LABELS[name]}: already running (pid {record.pid})")
            _wait_healthy(record, timeout)
            if name == "registry" and not record.info.get("storage"):
                echo(f"note: {REGISTRY_IN_MEMORY_NOTE}")
        elif record is not None and name != "mirrormaker" and _is_healthy(name, record.ports):
            # Not ours to restart (or stop): something answers on the recorded ports.
            echo(f"{LABELS[name]}: pid {record.pid} is gone but the service answers on its recorded port; kept")
        else:
            if record is not None:
                _require_recorded_ports_free(record, home)
                echo(f"{LABELS[name]}: pid {record.pid} is gone; starting it again on its recorded ports")
            started = time.monotonic()
            record = _start(name, home, ports, logs, echo, material=material)
            records[name] = record
            processes.save_records(home, records)
            _wait_healthy(record, timeout)
            if name in ("kafka", "kafka_b"):
                kafka.allocate_producer_ids(getattr(ports, name), timeout=timeout)
            echo(f"{LABELS[name]}: started (pid {record.pid}) in {time.monotonic() - started:.1f}s")
        if name == "postgres":
            # Also when PostgreSQL already ran: a cluster made before the registry stored its schemas
            # there lacks that database, and the registry starts next.
            postgres.ensure_databases(ports.postgres)
            postgres.probe_databases(ports.postgres)
            if material is not None:
                secure.ensure_roles(material, postgres.dsn(ports.postgres, "{database}"))
    endpoints = endpoints_for(ports, regions)
    if material is not None:
        entries = secure.env_entries(material, ports.postgres, ports.kafka_secure, endpoints.registry_url)
        endpoints = replace(endpoints, secure=tuple(sorted(entries.items())))
    env_file = home / ENV_FILE_NAME
    # Left alone when unchanged: a connector may be reading it.
    if not env_file.is_file() or Endpoints.from_env(read_env_file(env_file)) != endpoints:
        write_env_file(env_file, endpoints)
    return endpoints


def _start(
    name: str, home: Path, ports: Ports, logs: Path, echo: Echo, *, material: secure.Material | None = None
) -> ProcessRecord:
    if name == "postgres":
        require_free("postgres", ports.postgres, LABELS[name])
        pg = postgres.prepare(home, ports.postgres)
        if material is not None:
            uid, gid = (None, None) if pg.user is None else (pg.user.uid, pg.user.gid)
            secure.harden_postgres(material, Path(pg.argv[0]).parent, pg.data_dir, uid, gid)
        echo(f"{LABELS[name]}: starting on port {ports.postgres}")
        return processes.start(
            name,
            pg.argv,
            log=logs / "postgres.log",
            cwd=pg.cwd,
            user=None if pg.user is None else pg.user.uid,
            group=None if pg.user is None else pg.user.gid,
            ports={"postgres": ports.postgres},
            info={"data": str(pg.data_dir), "os_user": pg.user.name if pg.user else ""},
        )
    if name == "kafka":
        require_free("kafka", ports.kafka, LABELS[name])
        require_free("kafka_controller", ports.kafka_controller, LABELS[name] + " controller")
        echo(f"{LABELS[name]}: preparing {kafka.KAFKA_VERSION} (jars via Maven on first use)")
        kafka_ports = {"kafka": ports.kafka, "kafka_controller": ports.kafka_controller}
        if material is None:
            kf = kafka.prepare(home, ports.kafka, ports.kafka_controller, logs)
        else:
            require_free("kafka_secure", ports.kafka_secure, LABELS[name] + " SASL_SSL")
            kafka_ports["kafka_secure"] = ports.kafka_secure
            extra = secure.kafka_properties(material, ports.kafka, ports.kafka_secure, ports.kafka_controller)
            kf = kafka.prepare(
                home,
                ports.kafka,
                ports.kafka_controller,
                logs,
                extra_properties=extra,
                format_args=secure.scram_format_args(material),
            )
        echo(f"{LABELS[name]}: starting on port {ports.kafka} (controller {ports.kafka_controller})")
        return processes.start(
            name,
            kf.argv,
            log=kf.log,
            output=logs / "kafka.out",
            cwd=kf.cwd,
            ports=kafka_ports,
            info={"version": kafka.KAFKA_VERSION, "stdout": str(logs / "kafka.out")},
        )
    if name == "kafka_b":
        return _start_kafka_b(home, ports, logs, echo)
    if name == "mirrormaker":
        return _start_mirror(home, ports, logs, echo)
    port, management = getattr(ports, name), getattr(ports, f"{name}_management")
    require_free(name, port, LABELS[name])
    require_free(f"{name}_management", management, LABELS[name] + " management")
    # Region B's registry is a second instance over the same storage: both hand out and resolve the same ids.
    reg = registry.prepare(home, port, management, ports.postgres)
    jdbc = postgres.jdbc_url(ports.postgres, postgres.REGISTRY_DATABASE)
    secure.write_registry_config(reg.cwd, None if material is None else secure.registry_properties(material, jdbc))
    echo(f"{LABELS[name]}: starting {reg.version} on Java {reg.java.major} on port {port}")
    return processes.start(
        name,
        reg.argv,
        log=logs / f"{name}.log",
        cwd=reg.cwd,
        ports={name: port, f"{name}_management": management},
        info={
            "version": reg.version,
            "java": f"{reg.java.path} ({reg.java.major})",
            "storage": registry.storage_description(),
        },
    )


def _start_kafka_b(home: Path, ports: Ports, logs: Path, echo: Echo) -> ProcessRecord:
    name = "kafka_b"
    require_free(name, ports.kafka_b, LABELS[name])
    require_free("kafka_b_controller", ports.kafka_b_controller, LABELS[name] + " controller")
    region_logs = logs / "region-b"
    region_logs.mkdir(exist_ok=True)
    kf = kafka.prepare(home, ports.kafka_b, ports.kafka_b_controller, region_logs, base=home / "region-b" / "kafka")
    echo(f"{LABELS[name]}: starting on port {ports.kafka_b} (controller {ports.kafka_b_controller})")
    return processes.start(
        name,
        kf.argv,
        log=kf.log,
        output=region_logs / "kafka.out",
        cwd=kf.cwd,
        ports={"kafka_b": ports.kafka_b, "kafka_b_controller": ports.kafka_b_controller},
        info={"version": kafka.KAFKA_VERSION, "stdout": str(region_logs / "kafka.out")},
    )


def _start_mirror(home: Path, ports: Ports, logs: Path, echo: Echo) -> ProcessRecord:
    name = "mirrormaker"
    echo(f"{LABELS[name]}: preparing connect-mirror {kafka.KAFKA_VERSION} (jars via Maven on first use)")
    a, b = kafka.bootstrap(ports.kafka), kafka.bootstrap(ports.kafka_b)
    mm = mirror.prepare(home, a, b)
    echo(f"{LABELS[name]}: starting between {a} (A) and {b} (B)")
    return processes.start(
        name,
        mm.argv,
        log=logs / "mirrormaker.log",
        cwd=mm.cwd,
        ports=_mirror_ports(ports),
        info={
            "version": kafka.KAFKA_VERSION,
            "policy": "prefix (A.<topic> in B, B.<topic> in A)",
            "started": f"{time.time():.3f}",
        },
    )


def down(home: Path, *, clean: bool = False, echo: Echo = _quiet) -> list[str]:
    """Stop exactly the processes `up` recorded (newest service first); names of those that were running."""
    records = processes.load_records(home)
    stopped: list[str] = []
    for name in reversed(ALL_SERVICES):
        record = records.get(name)
        if record is None:
            continue
        record = _current(record)
        sig = postgres.STOP_SIGNAL if name == "postgres" else processes.signal.SIGTERM
        if processes.stop(record, sig=sig):
            stopped.append(name)
            echo(f"{LABELS[name]}: stopped (pid {record.pid})")
        else:
            echo(f"{LABELS[name]}: was not running")
        del records[name]
        processes.save_records(home, records)
    if records == {} and (home / processes.PIDS_FILE_NAME).exists():
        (home / processes.PIDS_FILE_NAME).unlink()
        (home / ENV_FILE_NAME).unlink(missing_ok=True)
    if clean:
        region_b = home / "region-b" / "kafka"
        for path in (
            home / "postgres",
            home / "kafka" / "data",
            home / "kafka" / "cluster.id",
            region_b / "data",
            region_b / "cluster.id",
            home / "mirror" / "mm2.properties",
            home / secure.SECURE_DIR,
        ):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        echo("data of PostgreSQL and Kafka deleted")
    return stopped


def foreign_stack(home: Path) -> Endpoints | None:
    """The endpoints of a fully answering stack in `home/dev.env` that `up` did not start, if any."""
    return _foreign_stack(home, processes.load_records(home))


def status(home: Path) -> list[ServiceStatus]:
    """What runs where, and whether it answers now."""
    records = processes.load_records(home)
    if secure.is_secure(home) and "postgres" in records:
        secure.use_admin_password(secure.ensure_material(home), records["postgres"].ports["postgres"])
    result: list[ServiceStatus] = []
    names = ALL_SERVICES if any(name in REGION_B_SERVICES for name in records) else SERVICES
    for name in names:
        record = records.get(name)
        if record is None:
            result.append(ServiceStatus(name, False, False, None, {}, "not started", ""))
            continue
        record = _current(record)
        # Asked of the service: a pid that ended may have been replaced by one that serves the same port.
        healthy = _is_healthy(name, record.ports)
        running = healthy or processes.is_running(record)
        detail = ", ".join(f"{key} {value}" for key, value in record.info.items() if value and key != "started")
        result.append(ServiceStatus(name, running, healthy, record.pid, record.ports, detail, record.log))
    return result
