"""`python -m sources.postgres CONFIG`: run only the source of a config (used by fault-injection tests).

Equivalent to `cdc run CONFIG --only source` without the ops server; exits non-zero on any error.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from connector.config import load_config
from core.errors import ConnectorError
from sources.postgres.source import PostgresSource
from transforms.base import TransformChain


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m sources.postgres CONFIG", file=sys.stderr)
        return 2
    config = load_config(argv[0])
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        PostgresSource(config, TransformChain()).run(stop)
    except ConnectorError as exc:
        logging.getLogger("cdc").error("source stopped: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
