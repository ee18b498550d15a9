"""Runs one PostgresSink in its own process (for kill -9 tests): `python sink_process.py CONFIG.json`."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from connector.config import ConnectorConfig
from sinks.postgres import PostgresSink
from transforms.registry import build_chain


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = ConnectorConfig.model_validate(json.load(handle))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    PostgresSink(config, build_chain(config.transforms_for("sink"), side="sink")).run(stop)


if __name__ == "__main__":
    main()
