"""Apicurio Registry for the local stack (Confluent-compatible API at `/apis/ccompat/v7`).

Schemas are stored in the stack's PostgreSQL (database `registry`), not in Apicurio's default in-memory
storage: a registry that forgot its schemas would hand out ids 1, 2, 3... again, and every id already
written to Kafka would then name another table's schema. So the registry starts after PostgreSQL and
serves the same ids after any restart. Apicurio 3.3.3 needs Java 21; on an older JDK 3.0.9 (Java 17) is used.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.errors import StackError
from devstack import jvm, postgres
from devstack.maven import run_maven
from devstack.ports import HOST

PREFERRED_VERSION = "3.3.3"
FALLBACK_VERSION = "3.0.9"
JAVA_ENV = "CDC_REGISTRY_JAVA"
CCOMPAT_PATH = "/apis/ccompat/v7"


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    cwd: Path
    version: str
    java: jvm.Java


def url(port: int) -> str:
    return f"http://{HOST}:{port}{CCOMPAT_PATH}"


def choose() -> tuple[str, jvm.Java]:
    """The registry version this machine's Java can run, and that Java."""
    java = jvm.find_java(21, JAVA_ENV)
    if java is not None:
        return PREFERRED_VERSION, java
    java = jvm.find_java(17, JAVA_ENV)
    if java is not None:
        return FALLBACK_VERSION, java
    raise StackError(
        "no Java 17 or newer found for Apicurio Registry",
        hint=f"install a JDK (21+ preferred) or point {JAVA_ENV} at its bin/java",
    )


def ensure_distribution(home: Path, version: str) -> Path:
    """`<home>/registry/<version>` unpacked from the Maven artifact (fetched into ~/.m2 once)."""
    target = home / "registry" / version
    if (target / ".complete").is_file():
        return target
    download = home / "registry" / "download"
    shutil.rmtree(target, ignore_errors=True)
    download.mkdir(parents=True, exist_ok=True)
    run_maven(
        [
            "dependency:copy",
            f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
            f"-DoutputDirectory={download}",
        ],
        what=f"Apicurio Registry {version}",
    )
    archive = download / f"apicurio-registry-app-{version}-all.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    (target / ".complete").write_text(version + "\n", encoding="utf-8")
    return target


def _main_jar(dist: Path, version: str) -> str:
    if (dist / "quarkus-run.jar").is_file():
        return "quarkus-run.jar"
    runner = f"apicurio-registry-app-{version}-runner.jar"
    if (dist / runner).is_file():
        return runner
    raise StackError(f"no runnable jar in {dist}", hint=f"delete {dist} and run `cdc dev up` again")


def storage_settings(postgres_port: int) -> list[str]:
    """System properties that keep the registry's data in the stack's PostgreSQL (same names in 3.0 and 3.3)."""
    return [
        "-Dapicurio.storage.kind=sql",
        "-Dapicurio.storage.sql.kind=postgresql",
        f"-Dapicurio.datasource.url={postgres.jdbc_url(postgres_port, postgres.REGISTRY_DATABASE)}",
        f"-Dapicurio.datasource.username={postgres.SUPERUSER}",
        "-Dapicurio.datasource.password=",  # the stack's PostgreSQL trusts 127.0.0.1
        # Apicurio's pool keeps 20 connections open by default; a dev stack needs few.
        "-Dapicurio.datasource.jdbc.initial-size=2",
        "-Dapicurio.datasource.jdbc.min-size=2",
        "-Dapicurio.datasource.jdbc.max-size=20",
    ]


def storage_description() -> str:
    return f"PostgreSQL database {postgres.REGISTRY_DATABASE}"


def prepare(home: Path, port: int, management_port: int, postgres_port: int) -> Launch:
    version, java = choose()
    dist = ensure_distribution(home, version)
    argv = [
        java.path,
        "-Xmx512m",
        f"-Dquarkus.http.port={port}",
        f"-Dquarkus.http.host={HOST}",
        f"-Dquarkus.management.port={management_port}",
        f"-Dquarkus.management.host={HOST}",
        # Apicurio's Confluent API lists at most 1000 subjects by default; a dev stack that has run the test
        # suite a few times holds more, and `cdc status` lists the connector's subjects from that listing.
        "-Dapicurio.ccompat.max-subjects=1000000",
        *storage_settings(postgres_port),
        "-jar",
        _main_jar(dist, version),
    ]
    return Launch(argv, dist, version, java)


def probe(port: int, *, timeout: float = 5.0) -> None:
    """Raise unless `GET /subjects` answers with a JSON list."""
    try:
        with urllib.request.urlopen(url(port) + "/subjects", timeout=timeout) as response:  # noqa: S310 - our own URL
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:  # a registry behind basic auth (`cdc dev up --secure`) answers, and wants credentials
            return
        raise
    if not isinstance(body, list):
        raise StackError("the registry answered /subjects without a list")
