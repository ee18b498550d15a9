"""`<home>/dev.env`: the endpoints of a running stack as `KEY=value` lines (shell- and dotenv-readable).

Read back with `connector.config_loader.read_env_file`, the one reader of such files (the connector reads it too).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_FILE_NAME = "dev.env"
SECURE_PREFIX = "CDC_SECURE_"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the stack's services answer."""

    source_dsn: str
    target_dsn: str
    kafka_bootstrap: str
    registry_url: str
    # Region B of a two-region stack (`cdc dev up --regions 2`); None in a single-region one.
    kafka_bootstrap_b: str | None = None
    registry_url_b: str | None = None
    # A secure stack's endpoints and credentials (`CDC_SECURE_*`), as sorted (name, value) pairs.
    secure: tuple[tuple[str, str], ...] = ()

    def as_env(self) -> dict[str, str]:
        env = {
            "CDC_SOURCE_DSN": self.source_dsn,
            "CDC_TARGET_DSN": self.target_dsn,
            "CDC_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CDC_SCHEMA_REGISTRY_URL": self.registry_url,
            **dict(self.secure),
        }
        if self.kafka_bootstrap_b is not None:
            env["CDC_KAFKA_BOOTSTRAP_B"] = self.kafka_bootstrap_b
        if self.registry_url_b is not None:
            env["CDC_SCHEMA_REGISTRY_URL_B"] = self.registry_url_b
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Endpoints | None:
        """The endpoints named in `env`, or None when any of the four single-region ones is missing."""
        try:
            return cls(
                source_dsn=env["CDC_SOURCE_DSN"],
                target_dsn=env["CDC_TARGET_DSN"],
                kafka_bootstrap=env["CDC_KAFKA_BOOTSTRAP"],
                registry_url=env["CDC_SCHEMA_REGISTRY_URL"],
                kafka_bootstrap_b=env.get("CDC_KAFKA_BOOTSTRAP_B"),
                registry_url_b=env.get("CDC_SCHEMA_REGISTRY_URL_B"),
                secure=tuple(sorted((k, v) for k, v in env.items() if k.startswith(SECURE_PREFIX))),
            )
        except KeyError:
            return None


def write_env_file(path: Path, endpoints: Endpoints) -> None:
    # Quoted where a shell would misread the value (`&` in a DSN's query); read_env_file strips the quotes.
    lines = [f"{key}={shlex.quote(value)}" for key, value in endpoints.as_env().items()]
    tmp = path.with_suffix(".tmp")
    if endpoints.secure:  # it holds passwords
        tmp.touch(mode=0o600)
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)

