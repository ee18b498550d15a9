"""Us and Debezium side by side in one run, on the local stack: snapshot, streaming burst, steady load, one large
transaction.

    python bench/versus_debezium.py [--quick] [--only snapshot burst steady bigtx] [--repeat N]
                                    [--publish] [--note TEXT] [--env-file .cdc/dev.env] [sizes...]
    python bench/versus_debezium.py --render bench/results/versus-debezium-STAMP.json [--publish]

Workloads (docs/benchmarks.md says what each figure means; bench/harness/ holds one module per workload):

- snapshot: the initial snapshot of a narrow (5 columns) and a wide (30 columns) table, rows/s into Kafka, our
  source against Debezium's PostgreSQL connector.
- burst: a backlog of inserts then updates drained from a stopped start: source (WAL -> Kafka acknowledged),
  sink (Kafka -> destination rows: ours against Debezium's JDBC sink), and ours end to end.
- steady: a mixed load at a fixed offered rate, each side end to end: latency percentiles, and the highest offered
  rate that holds (a short step search; the rule is in bench/harness/steady.py).
- bigtx: one transaction of a million rows: time from its commit to the last row applied, peak RSS of each side.

Each throughput figure runs from the first to the last event a side was seen to deliver (process start-up
excluded); CPU seconds are the side's process tree's (user + system) over that span, peak RSS its high-water
mark (/proc). The order of the sides rotates between repeats; the tables show medians. Output: markdown on
stdout; JSON, markdown and PNG plots under bench/results/; with --publish also bench/reports/latest.md and its
plots (the committed report the README quotes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import bigtx, burst, plots, snapshot, steady  # noqa: E402
from bench.harness.context import TUNED_JDBC, Bench  # noqa: E402
from bench.harness.procs import log  # noqa: E402
from bench.harness.report import machine, markdown, medians, ratios  # noqa: E402
from connector.config_loader import environment_with  # noqa: E402
from devstack.connect import AVRO_CONVERTER_VERSION, CONNECT_VERSION, DEBEZIUM_VERSION  # noqa: E402

WORKLOADS = {"snapshot": snapshot.run, "burst": burst.run, "steady": steady.run, "bigtx": bigtx.run}
SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "snapshot_rows": 300_000,
        "inserts": 300_000,
        "updates": 30_000,
        # Doubling from 1,250 offers 10,000 rows/s, the rate the latency target names.
        "steady_rate": 1_250,
        "steady_max_rate": 40_000,
        "steady_seconds": 15,
        "steady_drain": 30,
        "steady_warmup": 10,
        "big_tx_rows": 1_000_000,
        "no_jdbc_default": False,
    },
    "quick": {
        "snapshot_rows": 20_000,
        "inserts": 20_000,
        "updates": 2_000,
        "steady_rate": 1_000,
        "steady_max_rate": 4_000,
        "steady_seconds": 4,
        "steady_drain": 10,
        "steady_warmup": 3,
        "big_tx_rows": 100_000,
        "no_jdbc_default": True,
    },
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: under 3 minutes after the Maven fetch")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS), help="workloads to run")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repeats; the tables show medians")
    size = parser.add_argument_group("sizes (defaults: the default size, or --quick's)")
    size.add_argument("--snapshot-rows", type=int, help="rows of each snapshot table (narrow and wide)")
    size.add_argument("--inserts", type=int, help="burst: inserted rows")
    size.add_argument("--updates", type=int, help="burst: updates of the first rows")
    size.add_argument("--tx-size", type=int, default=1_000, help="burst: rows per source transaction")
    size.add_argument("--steady-rate", type=float, help="steady: the first (fixed) offered rate, rows/s")
    size.add_argument("--steady-max-rate", type=float, help="steady: the step search doubles up to this rate")
    size.add_argument("--steady-seconds", type=float, help="steady: seconds a step")
    size.add_argument("--steady-tx-rows", type=int, default=50, help="steady: rows a transaction (more above 200 tx/s)")
    size.add_argument("--steady-drain", type=float, help="steady: seconds after a step its rows must be applied in")
    size.add_argument("--steady-warmup", type=float, help="steady: seconds at the first rate before measuring")
    size.add_argument("--p99-bound", type=float, default=250, help="steady: a rate holds with p99 under this (ms)")
    size.add_argument(
        "--steady-poll-ms", type=int, default=50, help="steady: Debezium's poll.interval.ms (ours: batch wait 50 ms)"
    )
    size.add_argument("--big-tx-rows", type=int, help="bigtx: rows of the one transaction")
    parser.add_argument(
        "--decimal-handling",
        choices=["precise", "string", "double"],
        default="string",
        help="numeric encoding of both sources (Debezium's JDBC sink cannot map our precise decimals' NaN union)",
    )
    parser.add_argument("--no-jdbc-default", action="store_true", default=None, help="burst: only the tuned JDBC sink")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a side may take")
    parser.add_argument(
        "--env-file", type=Path, default=None, help="the stack's endpoints (default: $CDC_HOME/dev.env)"
    )
    parser.add_argument("--home", type=Path, default=None, help="where Connect's jars are cached (default: $CDC_HOME)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory of the run's files")
    parser.add_argument(
        "--publish",
        nargs="?",
        type=Path,
        const=ROOT / "bench" / "reports",
        default=None,
        help="also write the report as latest.md (+ plots) here (default bench/reports/, committed)",
    )
    parser.add_argument("--note", default="", help="a line for the report's title (e.g. 'machine loaded')")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="run nothing: write the markdown and plots of an earlier run's JSON again (with --publish: publish it)",
    )
    args = parser.parse_args(argv)
    args.size = "quick" if args.quick else "default"
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.size == "default" and any(
        getattr(args, k) != v for k, v in SIZES["default"].items() if k != "no_jdbc_default"
    ):
        args.size = "custom"
    home = Path(os.environ.get("CDC_HOME") or ROOT / ".cdc").expanduser().absolute()
    args.home = (args.home or home).absolute()
    args.env_file = args.env_file or home / "dev.env"
    if args.updates > args.inserts:
        parser.error("--updates must not exceed --inserts (updates touch the first rows)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        write(report, args.render.parent, args.render.stem, args.publish)
        return report
    load_at_start = os.getloadavg()
    env = environment_with(args.env_file if args.env_file.is_file() else None)
    missing = [
        k
        for k in ("CDC_SOURCE_DSN", "CDC_TARGET_DSN", "CDC_KAFKA_BOOTSTRAP", "CDC_SCHEMA_REGISTRY_URL")
        if not env.get(k)
    ]
    if missing:
        raise SystemExit(f"no {', '.join(missing)}: start the stack (`cdc dev up`) or pass --env-file")
    workdir = args.out / "work"
    started = time.time()
    workloads = [w for w in WORKLOADS if w in args.only]
    repeats: list[dict[str, Any]] = []
    for index in range(args.repeat):
        repeat: dict[str, Any] = {}
        for workload in workloads:
            with contextlib.ExitStack() as stack:
                bench = Bench(args, env, workdir, stack, index)
                log(f"repeat {index + 1}: {workload}")
                repeat[workload] = WORKLOADS[workload](bench)
            # Kept only when the workload failed: its logs say why.
            shutil.rmtree(bench.workdir, ignore_errors=True)
        repeats.append(repeat)
    summary = medians(repeats)
    params = {
        key: getattr(args, key)
        for key in (*SIZES["default"], "tx_size", "steady_tx_rows", "p99_bound", "steady_poll_ms", "repeat")
    }
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started),
        "size": args.size,
        "note": args.note,
        "machine": machine(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "versions": {
            "kafka_connect": CONNECT_VERSION,
            "debezium": DEBEZIUM_VERSION,
            "apicurio_converter": AVRO_CONVERTER_VERSION,
        },
        "parameters": {
            **params,
            "workloads": workloads,
            "decimal_handling": args.decimal_handling,
            "jdbc_tuned": TUNED_JDBC,
        },
        "medians": summary,
        "ratios": ratios(summary),
        "repeats": repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"versus-debezium-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = write(report, args.out, stem, args.publish)
    print(text)
    print(f"JSON: {args.out / (stem + '.json')}")
    return report


def write(report: dict[str, Any], out: Path, stem: str, publish: Path | None) -> str:
    """The run's markdown and plots beside its JSON in `out`, and with `publish` the committed copies too."""
    pngs = plots.render(report["repeats"][0], out, stem)
    text = markdown(report, [p.name for p in pngs])
    (out / f"{stem}.md").write_text(text)
    if publish is not None:
        publish.mkdir(parents=True, exist_ok=True)
        published = []
        for png in pngs:
            target = publish / png.name.replace(stem, "latest")
            shutil.copyfile(png, target)
            published.append(target.name)
        (publish / "latest.md").write_text(markdown(report, published))
        (publish / "latest.json").write_text(json.dumps({k: v for k, v in report.items() if k != "repeats"}, indent=2))
    return text


if __name__ == "__main__":
    main()
