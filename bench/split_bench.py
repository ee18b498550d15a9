"""`cdc run` in one process or two: the same backlog drained end to end by each, in interleaved rounds.

    python bench/split_bench.py [--rows 200000] [--tx-size 1000] [--rounds 3] [--env-file .cdc/dev.env]

Each round and mode (`--processes 1`, then `2`, the order alternating between rounds) gets a fresh narrow
5-column table: `cdc run` starts once to create its slot and stops; `--rows` inserts are committed in
transactions of `--tx-size`; then `cdc run --processes N` drains that WAL backlog through Kafka into the target.
The figure runs from the first row seen in the target to the last (start-up excluded; rows are applied in
order, so `max(id)` tells how far it got), CPU seconds are the process tree's (user + system) over the drain,
RSS the tree's at the end (the sink's child included in mode 2). Prints one line per run and the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.config_loader import environment_with  # noqa: E402

NARROW = "id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, flag boolean"
NARROW_ROW = "g, 'name ' || g, g * 1.5, now(), mod(g, 2) = 0"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # a thread or process that just ended
                queue.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and RSS in MiB of `pid` and its descendants."""
    cpu = rss = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICK
        rss += int(fields[21]) * PAGE / 2**20
    return cpu, rss


def _config(env: dict[str, str], name: str, table: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "kafka": {"bootstrap_servers": env["CDC_KAFKA_BOOTSTRAP"]},
        "schema_registry": {"url": env["CDC_SCHEMA_REGISTRY_URL"]},
        "source": {
            "dsn": env["CDC_SOURCE_DSN"],
            "topic_prefix": name,
            "slot": {"name": name},
            "publication": {"name": name},
            "tables": {"include": [f"public.{table}"]},
            "snapshot": {"mode": "never"},
        },
        "sink": {"dsn": env["CDC_TARGET_DSN"], "topics_regex": f"^{name}\\..*", "table_name_format": "{table}"},
        "transforms": {"source": [], "sink": []},
        "server": {"port": port},
    }


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(path: Path, processes: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector.cli",
                "--env-file",
                os.devnull,
                "run",
                str(path),
                "--processes",
                processes,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _wait(predicate: Any, timeout: float, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"{what}: cdc run exited ({process.returncode}) or timed out\n{tail}")
        time.sleep(0.2)


def one_run(env: dict[str, str], processes: str, rows: int, tx_size: int, workdir: Path) -> dict[str, float]:
    name = f"splitbench_{uuid.uuid4().hex[:8]}"
    src, dst = env["CDC_SOURCE_DSN"], env["CDC_TARGET_DSN"]
    port = _free_port()
    path, log = workdir / f"{name}.json", workdir / f"{name}.log"
    path.write_text(json.dumps(_config(env, name, name, port)))
    table = sql.Identifier(name)
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(sql.SQL(f"CREATE TABLE {{}} ({NARROW})").format(table))
    try:
        process = _start(path, processes, log)
        _wait(lambda: _ready(port), 120, process, "first start", log)
        _stop(process)
        with psycopg.connect(src, autocommit=True) as conn:
            for first in range(1, rows + 1, tx_size):
                last = min(first + tx_size - 1, rows)
                conn.execute(
                    sql.SQL(
                        f"INSERT INTO {{}} SELECT {NARROW_ROW} FROM generate_series(%s::bigint, %s::bigint) g"
                    ).format(table),
                    (first, last),
                )
        process = _start(path, processes, log)
        with psycopg.connect(dst, autocommit=True) as conn:

            def applied() -> int:
                try:
                    row = conn.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(table)).fetchone()
                except psycopg.errors.UndefinedTable:
                    return 0
                return int(row[0]) if row else 0

            _wait(lambda: applied() > 0, 300, process, "first row", log)
            began, cpu_began = time.monotonic(), _cpu_and_rss(process.pid)[0]
            _wait(lambda: applied() >= rows, 900, process, "last row", log)
            seconds = time.monotonic() - began
            cpu, rss = _cpu_and_rss(process.pid)
        _stop(process)
        return {"rate": rows / seconds, "seconds": seconds, "cpu_s": cpu - cpu_began, "rss_mib": rss}
    finally:
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (name,))  # fmt: skip
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        with psycopg.connect(dst, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", name)))
            conn.execute("DELETE FROM cdc.applied_changes WHERE topic LIKE %s", (f"{name}.%",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tx-size", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env-file", type=Path, default=ROOT / ".cdc" / "dev.env")
    args = parser.parse_args()
    env = environment_with(args.env_file if args.env_file.exists() else None)
    results: dict[str, list[dict[str, float]]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory(prefix="split-bench-") as tmp:
        for index in range(args.rounds):
            for processes in ("1", "2") if index % 2 == 0 else ("2", "1"):
                figure = one_run(env, processes, args.rows, args.tx_size, Path(tmp))
                results[processes].append(figure)
                print(f"round {index + 1}, --processes {processes}: {figure['rate']:,.0f} rows/s "
                      f"({figure['seconds']:.1f}s, {figure['cpu_s']:.1f} CPU s, RSS {figure['rss_mib']:.0f} MiB)",
                      flush=True)  # fmt: skip
    for processes, figures in results.items():
        rate = statistics.median(f["rate"] for f in figures)
        cpu = statistics.median(f["cpu_s"] for f in figures)
        rss = statistics.median(f["rss_mib"] for f in figures)
        print(f"median --processes {processes}: {rate:,.0f} rows/s, {cpu:.1f} CPU s, RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
