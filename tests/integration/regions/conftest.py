"""The two-region stack of `cdc dev up --regions 2`, started once per session on free ports and stopped after.

`CDC_TEST_REGIONS_HOME` names the state directory of a two-region stack to use instead (started there if it is
not running, left running after); the tests stop and restart its MirrorMaker and region A's Kafka.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import control
from devstack.ports import Ports
from tests.integration.regions.regions_support import TwoRegions

REUSE_ENV = "CDC_TEST_REGIONS_HOME"


@pytest.fixture(scope="session")
def regions() -> Iterator[TwoRegions]:
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        home = Path(reuse).absolute()
        yield TwoRegions(home, control.up(home, Ports(), regions=2))
        return
    # Not pytest's tmp_path: its parents are private (0700) and PostgreSQL runs as another OS user under root.
    home = Path(tempfile.mkdtemp(prefix="cdc-regions-"))
    home.chmod(0o755)
    try:
        yield TwoRegions(home, control.up(home, Ports.free(), regions=2))
    finally:
        control.down(home, clean=True)
        shutil.rmtree(home, ignore_errors=True)
