"""Apache Kafka for the local stack: one KRaft node (broker + controller) from Maven Central's jars."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from core.errors import StackError
from devstack import jvm
from devstack.maven import run_maven
from devstack.ports import HOST

KAFKA_VERSION = "4.3.1"
_POM = "kafka-pom.xml"
_LOG_CONFIG = "kafka-log4j2.properties"
_LIBS_MARKER = ".complete"


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    cwd: Path
    log: Path


def bootstrap(port: int) -> str:
    return f"{HOST}:{port}"


def _packaged(name: str) -> str:
    return resources.files("devstack").joinpath(name).read_text(encoding="utf-8")


def ensure_libs(home: Path) -> Path:
    """`<home>/kafka/libs` with the broker's jars; Maven runs only when they are not there yet."""
    libs = home / "kafka" / "libs"
    marker = libs / _LIBS_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == KAFKA_VERSION:
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    for old in libs.glob("*.jar"):
        old.unlink()
    pom = home / "kafka" / _POM
    pom.write_text(_packaged(_POM), encoding="utf-8")
    run_maven(
        ["-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        what=f"Apache Kafka {KAFKA_VERSION}",
    )
    marker.write_text(KAFKA_VERSION + "\n", encoding="utf-8")
    return libs


def _cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, base64url without padding; a leading '-' would read as a flag.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def server_properties(
    data_dir: Path, port: int, controller_port: int, extra: Mapping[str, str] | None = None
) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        **(extra or {}),
    }
    return "# written by `cdc dev up`\n" + "".join(f"{key}={value}\n" for key, value in settings.items())


def prepare(
    home: Path,
    port: int,
    controller_port: int,
    logs: Path,
    *,
    base: Path | None = None,
    extra_properties: Mapping[str, str] | None = None,
    format_args: Sequence[str] = (),
) -> Launch:
    """Fetch the jars, write the configs, format the storage on first use; say how to start the broker.

    `base` holds the node's config, cluster id and data (default `<home>/kafka`); a second cluster (region B of a
    two-region stack) has its own and shares the jars of `<home>/kafka/libs`. `extra_properties` override the
    broker's settings; `format_args` go to the first storage format (SCRAM users).
    """
    java = jvm.require_java(17, f"Apache Kafka {KAFKA_VERSION}")
    libs = ensure_libs(home)
    base = base or home / "kafka"
    base.mkdir(parents=True, exist_ok=True)
    data_dir = base / "data"
    config = base / "server.properties"
    config.write_text(server_properties(data_dir, port, controller_port, extra_properties), encoding="utf-8")
    log_config = base / "log4j2.properties"
    log_config.write_text(_packaged(_LOG_CONFIG), encoding="utf-8")
    jvm_args = [
        java.path,
        "-Xmx768m",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        f"-Dkafka.logs.dir={logs}",
        "-cp",
        f"{libs}/*",
    ]
    if not (data_dir / "meta.properties").exists():
        _format_storage(jvm_args, base, config, logs, format_args)
    return Launch([*jvm_args, "kafka.Kafka", str(config)], base, logs / "kafka-server.log")


def _format_storage(
    jvm_args: list[str], base: Path, config: Path, logs: Path, format_args: Sequence[str] = ()
) -> None:
    id_file = base / "cluster.id"
    if not id_file.is_file():
        id_file.write_text(_cluster_id() + "\n", encoding="utf-8")
    cluster_id = id_file.read_text(encoding="utf-8").strip()
    result = subprocess.run(
        [
            *jvm_args, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), "--ignore-formatted",
            *format_args,
        ],
        capture_output=True,
        text=True,
        cwd=base,
        check=False,
        timeout=300,
    )
    (logs / "kafka-format.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        last = ((result.stderr or result.stdout).strip().splitlines() or ["?"])[-1]
        raise StackError(f"formatting Kafka's storage failed: {last}", hint=f"see {logs / 'kafka-format.log'}")


def probe(port: int, *, timeout: float = 5.0) -> None:
    """Raise unless the broker answers a metadata request and lists itself."""
    admin = AdminClient(
        {"bootstrap.servers": bootstrap(port), "log_level": 0, "socket.timeout.ms": int(timeout * 1000)}
    )
    metadata = admin.list_topics(timeout=timeout)
    if not metadata.brokers:
        raise StackError("Kafka answered without brokers")


def allocate_producer_ids(port: int, *, timeout: float = 60.0) -> None:
    """Make a freshly started broker fetch its first block of producer ids from the controller.

    A broker asks the controller for that block only when the first producer asks it for an id, and answers
    that producer "coordinator load in progress" meanwhile: librdkafka retries, but first logs a warning that
    looks like trouble. The producer here takes that first answer (quietly), not the connector's. Its
    transactional id is new each time: a known one would get its old producer id back, and no block be fetched.
    """
    settings = {"bootstrap.servers": bootstrap(port), "transactional.id": f"cdc-dev-up-{uuid.uuid4()}", "log_level": 0}
    producer = Producer(settings)
    try:
        producer.init_transactions(timeout)
    except KafkaException as exc:
        raise StackError(f"Kafka did not hand out a producer id within {timeout:.0f}s: {exc.args[0]}") from None
