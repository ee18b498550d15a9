"""Apache Kafka's MirrorMaker 2 between the two regions of `cdc dev up --regions 2`.

The real `connect-mirror-maker` driver (`org.apache.kafka.connect.mirror.MirrorMaker`, dedicated mode) from
`org.apache.kafka:connect-mirror` at the stack's Kafka version, with its jars fetched through Maven once and laid
out under `<home>/mirror/libs`. One properties file names both clusters (aliases `A` and `B`) and enables both
flows. The replication policy is MirrorMaker's default: a topic `t` of region A appears in region B as `A.t`.
That prefix is what stops a record from going round in circles (MirrorMaker never sends `A.t` back to A, nor a
topic whose name already carries the target's alias); the identity policy keeps names but has no cycle detection,
so it can only mirror one way. See docs/active-active.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from core.errors import StackError
from devstack import jvm
from devstack.kafka import KAFKA_VERSION
from devstack.maven import run_maven

REGION_A = "A"
REGION_B = "B"
DRIVER_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"
REPLICATION_POLICY = "org.apache.kafka.connect.mirror.DefaultReplicationPolicy"
# Every topic; MirrorMaker itself leaves out its own, Kafka's internal ones and those it already mirrored here.
DEFAULT_TOPICS = ".*"
_POM = "mirror-pom.xml"
_LOG_CONFIG = "connect-log4j2.properties"
_MARKER = ".complete"
# Heartbeats are emitted every second; this much older means the driver (or one flow) stopped.
HEARTBEAT_FRESH_S = 30.0


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    cwd: Path
    config: Path


def _packaged(name: str) -> str:
    return resources.files("devstack").joinpath(name).read_text(encoding="utf-8")


def remote_topic(source_region: str, topic: str) -> str:
    """The name MirrorMaker's default policy gives `topic` of `source_region` in the other region."""
    return f"{source_region}.{topic}"


def ensure_libs(home: Path) -> Path:
    """`<home>/mirror/libs` with MirrorMaker's jars; Maven runs only when they are not there yet."""
    base = home / "mirror"
    libs = base / "libs"
    marker = libs / _MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == KAFKA_VERSION:
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    for old in libs.glob("*.jar"):
        old.unlink()
    pom = base / _POM
    pom.write_text(_packaged(_POM), encoding="utf-8")
    run_maven(
        ["-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        what=f"MirrorMaker 2 (connect-mirror {KAFKA_VERSION})",
    )
    marker.write_text(KAFKA_VERSION + "\n", encoding="utf-8")
    return libs


def mirror_properties(bootstrap_a: str, bootstrap_b: str, *, topics: str = DEFAULT_TOPICS) -> dict[str, str]:
    """The driver's configuration: both clusters, both flows, single-node replication factors, short intervals."""
    return {
        "clusters": f"{REGION_A}, {REGION_B}",
        f"{REGION_A}.bootstrap.servers": bootstrap_a,
        f"{REGION_B}.bootstrap.servers": bootstrap_b,
        f"{REGION_A}->{REGION_B}.enabled": "true",
        f"{REGION_A}->{REGION_B}.topics": topics,
        f"{REGION_B}->{REGION_A}.enabled": "true",
        f"{REGION_B}->{REGION_A}.topics": topics,
        "replication.policy.class": REPLICATION_POLICY,
        # The source writes in Kafka transactions: an aborted attempt must not be mirrored as if committed.
        f"{REGION_A}.consumer.isolation.level": "read_committed",
        f"{REGION_B}.consumer.isolation.level": "read_committed",
        # Each region's sink keeps its own offsets in the destination: MirrorMaker's translated group offsets
        # would name offsets of the other cluster's group, which no sink reads.
        "sync.group.offsets.enabled": "false",
        "sync.topic.acls.enabled": "false",
        "tasks.max": "1",
        # A single broker per region.
        "replication.factor": "1",
        "checkpoints.topic.replication.factor": "1",
        "heartbeats.topic.replication.factor": "1",
        "offset-syncs.topic.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        "config.storage.replication.factor": "1",
        # A change topic created while running is mirrored within seconds (default: ten minutes).
        "refresh.topics.interval.seconds": "2",
        "refresh.groups.interval.seconds": "30",
        "emit.heartbeats.interval.seconds": "1",
        "emit.checkpoints.interval.seconds": "10",
        "offset.flush.interval.ms": "1000",
    }


def prepare(home: Path, bootstrap_a: str, bootstrap_b: str) -> Launch:
    """Fetch the jars, write the driver's config and log config; say how to start it."""
    java = jvm.require_java(17, f"MirrorMaker 2 {KAFKA_VERSION}")
    libs = ensure_libs(home)
    base = home / "mirror"
    config = base / "mm2.properties"
    config.write_text(
        "# written by `cdc dev up --regions 2`\n"
        + "".join(f"{key}={value}\n" for key, value in mirror_properties(bootstrap_a, bootstrap_b).items()),
        encoding="utf-8",
    )
    log_config = base / "log4j2.properties"
    log_config.write_text(_packaged(_LOG_CONFIG), encoding="utf-8")
    argv = [
        java.path,
        "-Xms128m",
        "-Xmx512m",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        f"{libs}/*",
        DRIVER_CLASS,
        str(config),
    ]
    return Launch(argv, base, config)


def probe(
    bootstrap_a: str,
    bootstrap_b: str,
    *,
    timeout: float = 5.0,
    fresh_s: float = HEARTBEAT_FRESH_S,
    since: float | None = None,
) -> None:
    """Raise unless both flows run now: each cluster got a heartbeat of the other, mirrored, within `fresh_s`
    (and, with `since`, emitted after that moment: epoch seconds).

    A heartbeat of flow A->B is written to B's `heartbeats` and comes back to A as `B.heartbeats` through flow
    B->A (and the other way round), so a recent record in both proves both flows; the topics alone outlive the
    driver.
    """
    for bootstrap, source in ((bootstrap_a, REGION_B), (bootstrap_b, REGION_A)):
        topic = remote_topic(source, "heartbeats")
        newest = _newest_timestamp_ms(bootstrap, topic, timeout)
        if newest is None:
            raise StackError(f"MirrorMaker does not mirror region {source} yet (nothing in {topic})")
        age = time.time() - newest / 1000
        if age > fresh_s:
            raise StackError(f"MirrorMaker's last heartbeat from region {source} is {age:.0f}s old")
        if since is not None and newest / 1000 < since:
            raise StackError(f"MirrorMaker has not mirrored a heartbeat from region {source} since it started")


def _newest_timestamp_ms(bootstrap: str, topic: str, timeout: float) -> int | None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "cdc-dev-probe",
            "enable.auto.commit": False,
            "log_level": 0,
            "socket.timeout.ms": int(timeout * 1000),
        }
    )
    try:
        if topic not in consumer.list_topics(timeout=timeout).topics:
            return None
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
        if high <= 0:
            return None
        consumer.assign([TopicPartition(topic, 0, high - 1)])
        message = consumer.poll(timeout)
        if message is None or message.error() is not None:
            return None
        _, stamp = message.timestamp()
        return int(stamp)
    finally:
        consumer.close()
