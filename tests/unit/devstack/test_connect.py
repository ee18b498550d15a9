"""Pure parts of the Kafka Connect launcher: install cache, plugin unpacking, worker settings, status reading."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from core.errors import StackError
from devstack import connect
from devstack.connect import ConnectInstall, ConnectWorker, Plugin

pytestmark = pytest.mark.unit

REGISTRY = "http://127.0.0.1:18081/apis/ccompat/v7"


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_apicurios_v2_api_is_derived_from_the_ccompat_url() -> None:
    assert connect.apicurio_v2_url(REGISTRY) == "http://127.0.0.1:18081/apis/registry/v2"
    assert connect.apicurio_v2_url("https://reg.example:8443/base/apis/ccompat/v7") == (
        "https://reg.example:8443/base/apis/registry/v2"
    )
    with pytest.raises(StackError, match="cannot derive"):
        connect.apicurio_v2_url("http://127.0.0.1:8081")


def test_the_avro_converter_speaks_confluent_wire_format_with_content_ids() -> None:
    assert connect.avro_converter_settings("value.converter", REGISTRY) == {
        "value.converter": "io.apicurio.registry.utils.converter.AvroConverter",
        "value.converter.apicurio.registry.url": "http://127.0.0.1:18081/apis/registry/v2",
        "value.converter.apicurio.registry.auto-register": "true",
        "value.converter.apicurio.registry.as-confluent": "true",
        "value.converter.apicurio.registry.use-id": "contentId",
        "value.converter.apicurio.registry.headers.enabled": "false",
    }


def test_worker_properties_name_its_own_port_offsets_and_plugins(tmp_path: Path) -> None:
    settings = connect.worker_properties(
        bootstrap="127.0.0.1:19092",
        rest_port=4321,
        offsets_file=tmp_path / "offsets.dat",
        plugin_path=[tmp_path / "a", tmp_path / "b"],
        registry_url=REGISTRY,
    )
    assert settings["listeners"] == "http://127.0.0.1:4321"
    assert settings["offset.storage.file.filename"] == str(tmp_path / "offsets.dat")
    assert settings["plugin.path"] == f"{tmp_path / 'a'},{tmp_path / 'b'}"
    assert settings["plugin.discovery"] == "service_load"
    assert settings["key.converter.apicurio.registry.use-id"] == "contentId"
    assert settings["value.converter"] == connect.AVRO_CONVERTER_CLASS


def test_properties_text_escapes_what_java_would_misread() -> None:
    text = connect._properties_text({"a:b c=d": "x\\y", "plain": "jdbc:postgresql://h:1/db"})
    assert text == "a\\:b\\ c\\=d=x\\\\y\nplain=jdbc:postgresql://h:1/db\n"


def test_a_plugin_tarball_with_one_top_directory_becomes_the_plugin_directory(tmp_path: Path) -> None:
    archive = _tarball(tmp_path / "p.tar.gz", {"top/a.jar": b"a", "top/lib/b.jar": b"b"})
    target = tmp_path / "plugins" / "p" / "p"
    target.parent.mkdir(parents=True)
    connect._unpack_plugin(archive, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.jar")) == ["a.jar", "lib/b.jar"]
    assert [p.name for p in target.parent.iterdir()] == ["p"]


def test_a_flat_plugin_tarball_is_unpacked_into_the_plugin_directory(tmp_path: Path) -> None:
    archive = _tarball(tmp_path / "p.tar.gz", {"a.jar": b"a", "b.jar": b"b"})
    target = tmp_path / "p"
    connect._unpack_plugin(archive, target)
    assert sorted(p.name for p in target.iterdir()) == ["a.jar", "b.jar"]


def test_a_tarball_member_escaping_its_directory_is_refused(tmp_path: Path) -> None:
    archive = _tarball(tmp_path / "p.tar.gz", {"../evil.jar": b"x"})
    (tmp_path / "plugins").mkdir()
    with pytest.raises(StackError, match=r"cannot unpack p\.tar\.gz"):
        connect._unpack_plugin(archive, tmp_path / "plugins" / "p")
    assert not (tmp_path / "evil.jar").exists()


def test_the_service_manifest_lists_the_converter(tmp_path: Path) -> None:
    connect._write_service_manifest(tmp_path, "org.apache.kafka.connect.storage.Converter", ["x.Y"])
    with zipfile.ZipFile(tmp_path / "cdc-service-manifests.jar") as jar:
        assert jar.read("META-INF/services/org.apache.kafka.connect.storage.Converter") == b"x.Y\n"


def test_a_complete_install_is_used_without_maven_and_a_stale_one_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no mvn: any fetch fails at once
    root = tmp_path / "connect"
    root.mkdir()
    (root / ".complete").write_text(connect._INSTALL_ID + "\n", encoding="utf-8")
    assert connect.ensure_install(tmp_path) == ConnectInstall(root)
    (root / ".complete").write_text("connect 0.1\n", encoding="utf-8")
    with pytest.raises(StackError, match="Maven"):
        connect.ensure_install(tmp_path)
    assert not (root / ".complete").exists()


def test_each_plugin_has_its_own_plugin_path_entry(tmp_path: Path) -> None:
    install = ConnectInstall(tmp_path)
    entries = {install.plugin_path(plugin) for plugin in Plugin}
    assert len(entries) == len(Plugin)
    assert connect.plugin_of(connect.POSTGRES_CONNECTOR_CLASS) is Plugin.POSTGRES
    assert connect.plugin_of(connect.JDBC_SINK_CONNECTOR_CLASS) is Plugin.JDBC_SINK
    with pytest.raises(StackError, match="no plugin"):
        connect.plugin_of("org.example.Other")


def test_running_means_the_connector_and_every_task_run() -> None:
    running = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]}
    assert connect._all_running(running)
    assert not connect._all_running({"connector": {"state": "RUNNING"}, "tasks": []})
    assert not connect._all_running({**running, "tasks": [{"id": 0, "state": "UNASSIGNED"}]})
    assert connect._failed_part(running) is None
    failed = {**running, "tasks": [{"id": 0, "state": "FAILED", "trace": "org.x.Boom: no slot\n\tat a.b"}]}
    assert connect._failed_part(failed) == "task 0: org.x.Boom: no slot"
    wrapped = "org.x.Wrapper: failure\n\tat a.b\nCaused by: org.x.Middle: m\n\tat c\nCaused by: org.x.Root: why\n\tat d"
    died = {**running, "tasks": [{"id": 0, "state": "FAILED", "trace": wrapped}]}
    assert connect._failed_part(died) == "task 0: org.x.Wrapper: failure (caused by org.x.Root: why)"


def test_a_worker_that_cannot_start_fails_with_its_log_tail(tmp_path: Path) -> None:
    install = ConnectInstall(tmp_path / "empty-install")  # no jars: the JVM finds no ConnectStandalone
    install.libs.mkdir(parents=True)
    worker = ConnectWorker(
        install,
        tmp_path / "w",
        bootstrap="127.0.0.1:1",
        registry_url=REGISTRY,
        connectors={"c": {"connector.class": connect.POSTGRES_CONNECTOR_CLASS}},
    )
    with pytest.raises(StackError, match=r"(?s)Kafka Connect exited \(code 1\).*ConnectStandalone"):
        worker.start(timeout=60)
    assert "plugin.discovery=service_load" in (tmp_path / "w" / "worker.properties").read_text(encoding="utf-8")


def test_the_jdbc_sink_connects_with_a_jdbc_url_and_the_password_apart() -> None:
    settings = connect.jdbc_connection_settings("postgresql://app:s3cret@db.example:6543/my%20db?sslmode=disable")
    assert settings == {
        "connection.url": "jdbc:postgresql://db.example:6543/my%20db",
        "connection.username": "app",
        "connection.password": "s3cret",
    }
    assert connect.jdbc_connection_settings("host=127.0.0.1 dbname=target") == {
        "connection.url": "jdbc:postgresql://127.0.0.1:5432/target",
        "connection.username": "postgres",
    }
    with pytest.raises(StackError, match="names no database") as raised:
        connect.jdbc_connection_settings("host=h user=u password=hidden")
    assert "hidden" not in str(raised.value)


def test_the_jdbc_sink_upserts_by_key_deletes_and_reads_avro_from_the_registry() -> None:
    settings = connect.jdbc_sink_settings(
        "postgresql://postgres@127.0.0.1:15432/target", REGISTRY, topics=["a.public.t", "a.public.u"]
    )
    assert settings["connector.class"] == "io.debezium.connector.jdbc.JdbcSinkConnector"
    assert settings["topics"] == "a.public.t,a.public.u"
    assert {k: settings[k] for k in ("insert.mode", "primary.key.mode", "delete.enabled", "schema.evolution")} == {
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "schema.evolution": "basic",
    }
    assert settings["collection.name.format"] == "${source.table}"
    assert settings["connection.url"] == "jdbc:postgresql://127.0.0.1:15432/target"
    for side in ("key", "value"):
        converter = connect.avro_converter_settings(f"{side}.converter", REGISTRY)
        assert {k: settings[k] for k in converter} == converter
    tuned = connect.jdbc_sink_settings(
        "dbname=target", REGISTRY, topics=["t"], **{"dialect.postgres.unnest.insert.enabled": "true", "tasks.max": "2"}
    )
    assert tuned["dialect.postgres.unnest.insert.enabled"] == "true"
    assert tuned["tasks.max"] == "2"
    with pytest.raises(StackError, match="at least one topic"):
        connect.jdbc_sink_settings("dbname=target", REGISTRY, topics=[])
