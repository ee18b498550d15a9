"""The stack's TCP ports: defaults, free-port picking, and the "already taken" check.

A free port is found by binding port 0 and releasing it, so the kernel (not a random number)
chooses; all ports of one stack are held open together while picking so they are distinct.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, fields, replace

from core.errors import StackError

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Ports:
    """Every port the stack listens on (all on 127.0.0.1). 0 means "pick a free one"."""

    postgres: int = 15432
    kafka: int = 19092
    kafka_controller: int = 19093
    registry: int = 18081
    registry_management: int = 19001
    # Region B of `cdc dev up --regions 2` (unused by a single-region stack).
    kafka_b: int = 29092
    kafka_b_controller: int = 29093
    registry_b: int = 28081
    registry_b_management: int = 29002
    kafka_secure: int = 19094  # the SASL_SSL listener, used by `cdc dev up --secure` only

    @classmethod
    def free(cls) -> Ports:
        """Every port picked free at `resolved()` (`--free-ports`, private stacks of tests)."""
        return cls(**{f.name: 0 for f in fields(cls)})

    def resolved(self) -> Ports:
        """This set with each 0 replaced by a free port."""
        wanted = [f.name for f in fields(self) if getattr(self, f.name) == 0]
        if not wanted:
            return self
        return replace(self, **dict(zip(wanted, free_ports(len(wanted)), strict=True)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The flag and environment variable that set each port, for error messages.
PORT_OPTIONS: dict[str, tuple[str, str]] = {
    "postgres": ("--pg-port", "CDC_DEV_PG_PORT"),
    "kafka": ("--kafka-port", "CDC_DEV_KAFKA_PORT"),
    "kafka_controller": ("--kafka-controller-port", "CDC_DEV_KAFKA_CONTROLLER_PORT"),
    "registry": ("--registry-port", "CDC_DEV_REGISTRY_PORT"),
    "registry_management": ("--registry-management-port", "CDC_DEV_REGISTRY_MANAGEMENT_PORT"),
    "kafka_b": ("--kafka-b-port", "CDC_DEV_KAFKA_B_PORT"),
    "kafka_b_controller": ("--kafka-b-controller-port", "CDC_DEV_KAFKA_B_CONTROLLER_PORT"),
    "registry_b": ("--registry-b-port", "CDC_DEV_REGISTRY_B_PORT"),
    "registry_b_management": ("--registry-b-management-port", "CDC_DEV_REGISTRY_B_MANAGEMENT_PORT"),
    "kafka_secure": ("--kafka-secure-port", "CDC_DEV_KAFKA_SECURE_PORT"),
}


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (bind-and-release)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR matches what the services do, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def is_listening(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free(name: str, port: int, service: str) -> None:
    """Fail with one line naming the port and the option that changes it."""
    if is_free(port):
        return
    flag, env = PORT_OPTIONS[name]
    raise StackError(
        f"port {port} ({service}) is already in use on {HOST}",
        hint=f"choose another with {flag} PORT (or {env}=PORT), or use --free-ports",
    )
