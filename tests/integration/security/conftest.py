"""The secured stack (`cdc dev up --secure`) for the security tests: TLS + SCRAM everywhere, least-privilege roles.

`CDC_TEST_SECURE_ENV_FILE` names the `dev.env` of a running secure stack to use; otherwise one is started here on
free ports in a temporary home and stopped afterwards. Never the shared plaintext stack: its services have no TLS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.config_loader import read_env_file
from devstack import control
from devstack.ports import Ports

ENV_FILE_VAR = "CDC_TEST_SECURE_ENV_FILE"


@pytest.fixture(scope="session")
def secure_env() -> Iterator[dict[str, str]]:
    """The `CDC_SECURE_*` endpoints and credentials of a running secure stack."""
    named = os.environ.get(ENV_FILE_VAR)
    if named:
        env = read_env_file(Path(named))
        if "CDC_SECURE_SOURCE_DSN" not in env:
            pytest.fail(f"{named} is not the env file of a `cdc dev up --secure` stack", pytrace=False)
        yield env
        return
    home = Path(tempfile.mkdtemp(prefix="cdc-secure-stack-"))
    home.chmod(0o755)  # PostgreSQL runs as a non-root OS user when we are root; it must reach its directory
    saved = os.environ.get("PGPASSFILE")
    try:
        try:
            endpoints = control.up(home, Ports(0, 0, 0, 0, 0, 0), secured=True)
        except Exception as exc:
            control.down(home)
            pytest.fail(f"could not start a secure stack in {home}: {exc}", pytrace=False)
        yield endpoints.as_env()
    finally:
        control.down(home)
        shutil.rmtree(home, ignore_errors=True)
        # `up` pointed this process's libpq at the stack's superuser password file.
        if saved is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = saved
