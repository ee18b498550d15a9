"""Whether a Kafka bootstrap server speaks TLS: tells "plaintext client, TLS listener" apart from "broker down".

librdkafka cannot tell them apart: a broker's TLS listener drops a client that sends a plaintext ApiVersion
request, and the client reports only "all brokers are down" (its debug log says "connection closed by peer ...
in state APIVERSION_QUERY", as it would for a proxy in front of a dead broker). So a plaintext client that finds
no broker asks once whether the bootstrap servers answer a TLS handshake: if one does, its settings are wrong and
retrying cannot help; if none does, the brokers are down (or unreachable) and are retried as ever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from core.errors import FatalError, kafka_plaintext_to_tls_error
from core.tls_probe import speaks_tls

_PROBED_SERVERS = 3
"""Bootstrap servers probed at most: enough to see a misconfigured port, bounded when all are down."""


def _servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    servers = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:9092
        if host and port.isdigit():
            servers.append((host, int(port)))
    return servers[:_PROBED_SERVERS]


class PlaintextToTlsCheck:
    """Run by a Kafka client's error callback: once the client, speaking plaintext, finds no broker, probes its
    bootstrap servers once and returns the fatal error if one of them is a TLS listener."""

    def __init__(self, settings: dict[str, Any], *, probe: Callable[[str, int], bool] = speaks_tls) -> None:
        self._probe = probe
        protocol = str(settings.get("security.protocol", "PLAINTEXT")).upper()
        self._bootstrap = str(settings.get("bootstrap.servers", ""))
        self._pending = protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
        self._protocol = protocol

    def __call__(self, error: KafkaError) -> FatalError | None:
        if not self._pending or error.code() not in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            return None
        self._pending = False  # the settings do not change: one probe per client
        for host, port in _servers(self._bootstrap):
            if self._probe(host, port):
                return kafka_plaintext_to_tls_error(f"{host}:{port}", self._protocol)
        return None
