"""PNG plots of a run (optional: the `bench` extra installs matplotlib; without it the report has no plots).

Throughput over time: for every timed stage, each side's events per second against seconds since the side
started (start-up shows as the flat beginning). Latency: the steady load's p50 / p90 / p99 per offered rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness.procs import log
from bench.harness.report import LABELS, SIDE_LABELS

WINDOW_S = 1.0


def rates_over_time(timeline: list[list[float]]) -> tuple[list[float], list[float]]:
    """Events/s over windows of about WINDOW_S seconds."""
    xs: list[float] = []
    ys: list[float] = []
    last_t, last_n = timeline[0] if timeline else (0.0, 0)
    for t, n in timeline[1:]:
        if t - last_t >= WINDOW_S or (t, n) == tuple(timeline[-1]):
            if t > last_t:
                xs.append(t)
                ys.append((n - last_n) / (t - last_t))
            last_t, last_n = t, n
    return xs, ys


def render(repeat: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """throughput and latency PNGs of one repeat into `out`; none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no plots: install the bench extra (pip install -e '.[bench]') for matplotlib")
        return []
    written: list[Path] = []
    panels = [
        (workload, stage_name, sides)
        for workload, result in repeat.items()
        for stage_name, sides in result["stages"].items()
        if any(isinstance(f, dict) and f.get("timeline") for f in sides.values())
    ]
    if panels:
        columns = 2
        rows = (len(panels) + columns - 1) // columns
        fig, axes = plt.subplots(rows, columns, figsize=(12, 3.2 * rows), squeeze=False)
        for ax, (workload, stage_name, sides) in zip(axes.flat, panels, strict=False):
            for side, figure in sides.items():
                xs, ys = rates_over_time(figure.get("timeline", []))
                ax.plot(
                    xs,
                    ys,
                    label="ours" if side == "ours" else SIDE_LABELS.get(side, side),
                    linewidth=1.2,
                    marker=".",
                    markersize=3,
                )
            ax.set_title(f"{workload}: {LABELS[workload][stage_name]}", fontsize=9)
            ax.set_xlabel("seconds since the side started (or since the commit)", fontsize=8)
            ax.set_ylabel("events/s", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.tight_layout()
        path = out / f"{stem}-throughput.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    steps = repeat.get("steady", {}).get("steps")
    if steps:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for side, rows_ in steps.items():
            name = "ours" if side == "ours" else SIDE_LABELS.get(side, side)
            rates = [s["offered_rate"] for s in rows_]
            for key, style in (("p50_ms", ":"), ("p90_ms", "--"), ("p99_ms", "-")):
                ax.plot(rates, [s[key] for s in rows_], style, marker="o", label=f"{name} {key[:3]}")
        ax.axhline(repeat["steady"].get("bound", 250), color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("offered rows/s")
        ax.set_ylabel("latency, ms (commit at the source -> applied)")
        ax.set_title("steady mixed load: latency percentiles per offered rate")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out / f"{stem}-latency.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
