"""What ``bench oom`` found: the largest micro-batch that fits against capacity, one line
per precision and optimizer, and the (b, k) its planner chose at each capacity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
    WIDTH,
    bytes_axis,
    compact_bytes,
    legend_outside,
    log2_axis,
    new_figure,
    setup_theme,
    workload_label,
)
from bench.report.figures.probes import planner_choices, probe_boundaries


def oom_boundaries(probes: pd.DataFrame | None, notes: list[str]):
    """One row per workload with probes (``load_oom_probes``): b* (the largest ok
    micro-batch below the first that did not fit) of every search against its capacity,
    joined per precision and optimizer; searches under the capacity after a margin are
    points of their own at that smaller capacity. Stars: the planner's (b, k). None
    without probes or without a capped search."""
    if probes is None or not len(probes):
        return None
    capped = probes[probes["capacity_bytes"].fillna(0) > 0]
    if not len(capped):
        notes.append("OOM boundary: the probes ran on the device's own memory only (no cap)")
        return None
    sns = setup_theme()
    workloads = list(pd.unique(capped["workload"]))
    fig, axes = new_figure(len(workloads), 1, height=3.6, width=WIDTH * 0.8)
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        p = capped[capped["workload"] == w] if isinstance(w, str) else capped
        lines = probe_boundaries(p)
        groups = sorted(lines["group"].unique())
        colors = dict(zip(groups, sns.color_palette("deep", len(groups)), strict=True))
        margin = lines[lines["margin_pct"].notna()]
        lines = lines[lines["margin_pct"].isna()]
        for group, g in lines.groupby("group", sort=True):
            _draw_group(ax, g.sort_values("capacity_bytes"), group, colors[group])
        for group, g in margin.groupby("group", sort=True):
            _draw_margin(ax, g, group, colors[group])
        for c in planner_choices(p).itertuples():
            _draw_choice(ax, c, colors.get(c.group, "black"))
        ax.margins(x=0.08, y=0.15)  # the stars and their labels stay inside
        bytes_axis(ax, "x")
        log2_axis(ax, "y")
        ax.set_xlabel("memory capacity (cap)")
        ax.set_ylabel(f"{workload_label(w)}\nmicro-batch b")
        legend_outside(ax)
    fig.suptitle(
        "Largest micro-batch that fits (b*) against capacity, per precision and optimizer;\n"
        "x: the first that did not; bars: bands where runs disagree; dashed: the safe b\n"
        "after the margin; stars: the (b, k) the planner chose (after the margin)"
    )
    return fig


def _draw_group(ax, g: pd.DataFrame, group: str, color) -> None:
    fits = g[np.isfinite(g["last_ok"])]
    ax.plot(fits["capacity_bytes"], fits["last_ok"], marker="o", color=color, label=f"b* {group}")
    band = g[~g["exact"].astype(bool) & np.isfinite(g["first_bad"])]
    if len(band):  # [last always-fits, first always-fails]: runs between disagree
        lows = band["last_ok"].fillna(0)
        ax.vlines(band["capacity_bytes"], lows, band["first_bad"], color=color, lw=4,
                  alpha=0.35, label=f"band {group}")  # fmt: skip
    bad = g[np.isfinite(g["first_bad"])]
    ax.scatter(
        bad["capacity_bytes"],
        bad["first_bad"],
        marker="x",
        color=color,
        s=30,
        label=f"first not fitting {group}",
    )


def _draw_margin(ax, g: pd.DataFrame, group: str, color) -> None:
    """The safe b of each capacity: found under capacity x (1 - margin), drawn at the
    capacity itself, so it stands below that capacity's b*."""
    g = g[np.isfinite(g["last_ok"])].copy()
    g["at"] = g["capacity_bytes"] / (1 - g["margin_pct"] / 100)
    g = g.sort_values("at")
    pct = "/".join(f"{m:g}" for m in pd.unique(g["margin_pct"]))
    ax.plot(g["at"], g["last_ok"], ls="--", marker=".", color=color,
            label=f"safe b after {pct}% margin {group}")  # fmt: skip


def _draw_choice(ax, c, color) -> None:
    ax.scatter(
        [c.capacity_bytes],
        [c.micro_batch_size],
        marker="*",
        s=200,
        facecolors="none",
        edgecolors=color,
        linewidths=1.2,
        zorder=5,
        label=f"planner {c.group} at {compact_bytes(c.capacity_bytes)}: "
        f"{c.micro_batch_size:g}×{c.accumulation_steps:g}, {c.samples_per_s:,.0f}/s",
    )
