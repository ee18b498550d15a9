"""Runs one PostgresSink in its own process (for kill -9 tests): `python sink_process.py CONFIG.json [N]`.

With N, the process SIGKILLs itself right after the N-th batch's destination commit, before its Kafka commit
(the sink's `after_db_commit` fault point).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from connector.config import ConnectorConfig
from connector.pipeline import build_sink


def kill_after(commits: int) -> Callable[[], None]:
    """A fault point that kills this process (no cleanup at all) at the `commits`-th destination commit."""
    done = 0

    def after_db_commit() -> None:
        nonlocal done
        done += 1
        if done >= commits:
            os.kill(os.getpid(), signal.SIGKILL)

    return after_db_commit


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = ConnectorConfig.model_validate(json.load(handle))
    hook = kill_after(int(sys.argv[2])) if len(sys.argv) > 2 else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sink = build_sink(config, after_db_commit=hook)
    sink.run(stop)


if __name__ == "__main__":
    main()
