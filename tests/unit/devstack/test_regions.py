"""Pure parts of the two-region stack (`cdc dev up --regions 2`): MirrorMaker's config, ports, dev.env, records."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config_loader import read_env_file
from core.errors import StackError
from devstack import control, mirror, processes
from devstack.env_file import Endpoints, write_env_file
from devstack.ports import Ports

pytestmark = pytest.mark.unit


def test_mirror_maker_joins_both_clusters_both_ways_with_the_prefix_policy() -> None:
    props = mirror.mirror_properties("127.0.0.1:1", "127.0.0.1:2")
    assert props["clusters"] == "A, B"
    assert (props["A.bootstrap.servers"], props["B.bootstrap.servers"]) == ("127.0.0.1:1", "127.0.0.1:2")
    assert props["A->B.enabled"] == props["B->A.enabled"] == "true"
    # The prefix is what stops a record from going round: never the identity policy with both flows on.
    assert props["replication.policy.class"].endswith(".DefaultReplicationPolicy")
    assert props["A.consumer.isolation.level"] == props["B.consumer.isolation.level"] == "read_committed"
    assert props["sync.group.offsets.enabled"] == "false"
    assert mirror.remote_topic("A", "shop.public.orders") == "A.shop.public.orders"


def test_region_b_endpoints_go_into_dev_env_under_their_own_names(tmp_path: Path) -> None:
    ports = Ports(1, 2, 3, 4, 5, 6, 7, 8, 9)
    two = control.endpoints_for(ports, regions=2)
    write_env_file(tmp_path / "dev.env", two)
    values = read_env_file(tmp_path / "dev.env")
    assert values["CDC_KAFKA_BOOTSTRAP"] == "127.0.0.1:2"
    assert values["CDC_KAFKA_BOOTSTRAP_B"] == "127.0.0.1:6"
    assert values["CDC_SCHEMA_REGISTRY_URL_B"] == "http://127.0.0.1:8/apis/ccompat/v7"
    assert Endpoints.from_env(values) == two
    one = control.endpoints_for(ports)
    assert "CDC_KAFKA_BOOTSTRAP_B" not in one.as_env() and "CDC_SCHEMA_REGISTRY_URL_B" not in one.as_env()


def test_free_ports_for_one_region_leave_region_b_alone() -> None:
    resolved = Ports(0, 0, 0, 0, 0).resolved()  # region A's five ports only
    assert (resolved.kafka_b, resolved.registry_b) == (Ports().kafka_b, Ports().registry_b)
    everything = Ports.free().resolved()
    assert 0 not in everything.as_dict().values()
    assert len(set(everything.as_dict().values())) == len(everything.as_dict())


def test_mirror_maker_records_the_clusters_it_joins_not_ports_it_holds() -> None:
    dead_mirror = processes.ProcessRecord("mirrormaker", 1, -1, "log", {"cluster_a": 40001, "cluster_b": 40002})
    dead_kafka_b = processes.ProcessRecord("kafka_b", 1, -1, "log", {"kafka_b": 40003, "kafka_b_controller": 40004})
    ports = control._effective_ports(Ports(), {"mirrormaker": dead_mirror, "kafka_b": dead_kafka_b})
    assert (ports.kafka_b, ports.kafka_b_controller) == (40003, 40004)
    assert ports.kafka == Ports().kafka


def test_status_lists_region_b_only_where_it_was_started(tmp_path: Path) -> None:
    assert [s.name for s in control.status(tmp_path)] == list(control.SERVICES)
    assert control.recorded_regions(tmp_path) == 1
    gone = processes.ProcessRecord("kafka_b", 1, -1, "log", {"kafka_b": 1, "kafka_b_controller": 2})
    processes.save_records(tmp_path, {"kafka_b": gone})
    assert control.recorded_regions(tmp_path) == 2
    listed = {s.name: s for s in control.status(tmp_path)}
    assert list(listed) == list(control.ALL_SERVICES)
    assert listed["kafka_b"].pid == 1 and not listed["kafka_b"].healthy
    assert listed["mirrormaker"].detail == "not started"


def test_down_forgets_region_b_too(tmp_path: Path) -> None:
    gone = processes.ProcessRecord("mirrormaker", 1, -1, "log", {"cluster_a": 1, "cluster_b": 2})
    processes.save_records(tmp_path, {"mirrormaker": gone})
    assert control.down(tmp_path) == []
    assert processes.load_records(tmp_path) == {}


def test_only_one_or_two_regions(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="one or two regions"):
        control.up(tmp_path, Ports(), regions=3)
