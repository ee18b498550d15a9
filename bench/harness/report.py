"""The report of a run: machine and versions, medians over repeats, ratios ours / Debezium, and the markdown."""

from __future__ import annotations

import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from bench.harness import bigtx, burst, snapshot, steady

LABELS: dict[str, dict[str, str]] = {
    "snapshot": snapshot.LABELS,
    "burst": burst.LABELS,
    "steady": steady.LABELS,
    "bigtx": bigtx.LABELS,
}
SIDE_LABELS = {"debezium": "Debezium", **burst.SINK_LABELS}
RATIO_NAMES = {
    "rate": "speed",
    "cpu_s": "CPU",
    "peak_rss_mib": "memory",
    "p50_ms": "p50",
    "p99_ms": "p99",
    "held_rate": "rate held",
    "applied_s": "time",
}


def machine() -> dict[str, Any]:
    memory = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(int(memory.split()[1]) / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def medians(repeats: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """workload -> stage -> side -> the median of every numeric figure over the repeats."""
    out: dict[str, Any] = {}
    for workload, first in repeats[0].items():
        out[workload] = {}
        for stage_name, sides in first["stages"].items():
            out[workload][stage_name] = {
                side: {
                    key: statistics.median(r[workload]["stages"][stage_name][side][key] for r in repeats)
                    for key, value in figure.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                }
                for side, figure in sides.items()
            }
    return out


def ratio_keys(figure: dict[str, float]) -> tuple[str, ...]:
    if "applied_s" in figure:
        return ("applied_s", "peak_rss_mib")
    if "held_rate" in figure:
        return ("held_rate",)
    if "p99_ms" in figure:
        return ("p50_ms", "p99_ms")
    return ("rate", "cpu_s", "peak_rss_mib")


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    """workload -> stage -> Debezium's side -> {figure: ours / theirs}."""
    out: dict[str, Any] = {}
    for workload, stages in summary.items():
        for stage_name, sides in stages.items():
            ours = sides.get("ours")
            for side, theirs in sides.items():
                if side == "ours" or ours is None:
                    continue
                out.setdefault(workload, {}).setdefault(stage_name, {})[side] = {
                    RATIO_NAMES[key]: round(ours[key] / theirs[key], 2) if theirs.get(key) else math.nan
                    for key in ratio_keys(ours)
                }
    return out


# The project's throughput targets (docs/benchmarks.md); the report says which a run met.
TARGET_SINK_RATE = 100_000
TARGET_SINK_VERSUS_TUNED_JDBC = 2.0
TARGET_SOURCE_RATE = 100_000
TARGET_E2E_RATE = 50_000
TARGET_P99_RATE = 10_000
TARGET_P99_MS = 250
TARGET_MEMORY_SHARE = 0.25


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, what this run measured, met) for each target whose workload ran; None: not measured."""
    summary, ratio = report["medians"], report["ratios"]
    burst_run = summary.get("burst", {})
    rows: list[tuple[str, str, bool | None]] = []

    def rate_row(target: str, stage: str, bound: float, unit: str) -> None:
        figure = burst_run.get(stage, {}).get("ours")
        if figure:
            rows.append((target, f"{_n(figure['rate'])} {unit}", figure["rate"] >= bound))

    rate_row(f"sink >= {TARGET_SINK_RATE:,} rows/s", "sink", TARGET_SINK_RATE, "rows/s")
    versus = ratio.get("burst", {}).get("sink", {}).get("jdbc_tuned", {}).get("speed")
    if versus is not None and not math.isnan(versus):
        rows.append(
            (
                f"sink >= {TARGET_SINK_VERSUS_TUNED_JDBC:.0f}x the tuned JDBC sink",
                f"{versus:.2f}x",
                versus >= TARGET_SINK_VERSUS_TUNED_JDBC,
            )
        )
    rate_row(f"source >= {TARGET_SOURCE_RATE:,} events/s", "source", TARGET_SOURCE_RATE, "events/s")
    rate_row(f"end to end >= {TARGET_E2E_RATE:,} events/s", "e2e", TARGET_E2E_RATE, "events/s")
    steps = report.get("repeats", [{}])[0].get("steady", {}).get("steps", {}).get("ours")
    if steps is not None:
        target = f"end to end p99 <= {TARGET_P99_MS} ms at {TARGET_P99_RATE:,} events/s offered"
        step = next((s for s in steps if s["offered_rate"] == TARGET_P99_RATE), None)
        if step is None:
            reached = max((s["offered_rate"] for s in steps), default=0)
            rows.append((target, f"not offered (the search stopped at {_n(reached)} rows/s)", None))
        else:
            met = step["p99_ms"] <= TARGET_P99_MS and step["held"]
            rows.append((target, f"p99 {_n(step['p99_ms'])} ms, held: {'yes' if step['held'] else 'no'}", met))
    memory = [
        values["memory"]
        for stages in ratio.values()
        for sides in stages.values()
        for values in sides.values()
        if "memory" in values and not math.isnan(values["memory"])
    ]
    if memory:
        share = max(memory)
        rows.append(
            (
                f"peak RSS <= {TARGET_MEMORY_SHARE:.2f}x Debezium's",
                f"{share:.2f}x at most",
                share <= TARGET_MEMORY_SHARE,
            )
        )
    return rows


def _n(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def cell(figure: dict[str, float]) -> str:
    if "applied_s" in figure:
        return (
            f"{_n(figure['applied_s'], 1)} s, {_n(figure['cpu_s'], 1)} CPU-s, peak RSS {_n(figure['peak_rss_mib'])} MiB"
        )
    if "held_rate" in figure:
        failed = figure["first_failed_rate"]
        return f"{_n(figure['held_rate'])} rows/s" + (f" ({_n(failed)} did not hold)" if failed else " (the top step)")
    if "p99_ms" in figure:
        return (
            f"p50 {_n(figure['p50_ms'])} ms, p99 {_n(figure['p99_ms'])} ms at {_n(figure['offered_rate'])} rows/s "
            f"(written {_n(figure['achieved_write_rate'])}/s)"
        )
    return f"{_n(figure['rate'])}/s, {_n(figure['cpu_s'], 1)} CPU-s, peak RSS {_n(figure['peak_rss_mib'])} MiB"


def ratio_text(values: dict[str, float]) -> str:
    return ", ".join(
        f"{_n(v, 2)}x {name}" if not math.isnan(v) else f"{name}: neither side" for name, v in values.items()
    )


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    summary, ratio = report["medians"], report["ratios"]
    info, params, load = report["machine"], report["parameters"], report["load_average"]
    lines = [
        f"# Us and Debezium: {report['size']} run{' - ' + report['note'] if report.get('note') else ''}",
        "",
        f"{report['when']}, {report['seconds']:,} s; {info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, "
        f"the stack on the same machine; load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at "
        f"the end; medians of {params['repeat']}; Debezium {report['versions']['debezium']} on Kafka Connect "
        f"{report['versions']['kafka_connect']}. Sizes: {sizes(params)}.",
        "",
        "## Ratios (ours / Debezium)",
        "",
        "Speed and rate held above 1: we are faster; time, latency, CPU seconds and memory below 1: we use less.",
        "",
        "| workload | stage | against | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for workload, stages in ratio.items():
        for stage_name, sides in stages.items():
            for side, values in sides.items():
                against = SIDE_LABELS.get(side, side)
                lines.append(f"| {workload} | {LABELS[workload][stage_name]} | {against} | {ratio_text(values)} |")
    goals = targets(report)
    if goals:
        lines += ["", "## Targets", "", "| target | this run | met |", "| --- | --- | --- |"]
        lines += [
            f"| {target} | {measured} | {'-' if met is None else 'yes' if met else 'no'} |"
            for target, measured, met in goals
        ]
        if any(met is False for _, _, met in goals):
            lines += [
                "",
                "Where the time goes in each stage that misses its target, and the next lever: "
                "[docs/benchmarks.md](../../docs/benchmarks.md#where-the-time-goes).",
            ]
    lines += ["", "## Figures", "", "| workload | stage | ours | Debezium |", "| --- | --- | --- | --- |"]
    for workload, stages in summary.items():
        for stage_name, sides in stages.items():
            others = [s for s in sides if s != "ours"] or [None]
            for other in others:
                label = LABELS[workload][stage_name] + (
                    f" ({SIDE_LABELS[other]})" if other in burst.SINK_LABELS else ""
                )
                theirs = cell(sides[other]) if other else "-"
                lines.append(f"| {workload} | {label} | {cell(sides['ours'])} | {theirs} |")
    steps = report["repeats"][0].get("steady", {}).get("steps")
    if steps:
        rule = report["repeats"][0]["steady"]["rule"]
        lines += [
            "",
            f"Steady load, step search of the first repeat (a rate holds when: {rule}):",
            "",
            "| side | offered rows/s | written rows/s | p50 ms | p90 ms | p99 ms | max ms | held |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for side, rows in steps.items():
            for s in rows:
                lines.append(
                    f"| {SIDE_LABELS.get(side, side)} | {_n(s['offered_rate'])} | {_n(s['achieved_write_rate'])} | "
                    f"{_n(s['p50_ms'])} | {_n(s['p90_ms'])} | {_n(s['p99_ms'])} | {_n(s['max_ms'])} | "
                    f"{'yes' if s['held'] else 'no'} |"
                )
    lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots]]
    return "\n".join(lines) + "\n"


def sizes(params: dict[str, Any]) -> str:
    parts = []
    work = params["workloads"]
    if "snapshot" in work:
        parts.append(f"snapshot {params['snapshot_rows']:,} rows a table")
    if "burst" in work:
        parts.append(f"burst {params['inserts']:,} inserts + {params['updates']:,} updates (tx {params['tx_size']:,})")
    if "steady" in work:
        parts.append(
            f"steady {params['steady_rate']:,.0f} to {params['steady_max_rate']:,.0f} rows/s, "
            f"{params['steady_seconds']:.0f} s a step, p99 bound {params['p99_bound']:.0f} ms"
        )
    if "bigtx" in work:
        parts.append(f"one transaction of {params['big_tx_rows']:,} rows")
    return "; ".join(parts)
