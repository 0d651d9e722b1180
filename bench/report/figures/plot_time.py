"""Wall time to reach the target loss against effective batch B: which configuration
gets there first."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
    WIDTH,
    annotate_ids,
    draw_not_reached,
    legend_outside,
    log2_axis,
    matches,
    new_figure,
    plain,
    setup_theme,
    workload_label,
    workload_rows,
)
from bench.report.scaling import format_targets


def time_to_target(points: pd.DataFrame, configs: pd.DataFrame, target, notes: list[str]):
    """One row per workload: each configuration's median wall time to the target (as
    ``scaling.scaling_points``), labelled with its id, the fastest starred; those whose
    median seed never got there as open triangles at the top."""
    if target is None or not len(points) or not np.isfinite(points["time_to_target_s"]).any():
        notes.append("time to target: no configuration reached the target loss")
        return None
    sns = setup_theme()
    tags = configs.set_index("config_id")["config_tag"]
    workloads = workload_rows(points, notes, "time to target")
    fig, axes = new_figure(len(workloads), 1, height=3.6, width=WIDTH * 0.8)
    color = sns.color_palette("deep")[0]
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        p = points[matches(points["workload"], w) & (points["effective_batch_size"] > 0)]
        p = p.assign(tag=p["config_id"].map(tags))
        reached = p[np.isfinite(p["time_to_target_s"])]
        if len(reached):
            _draw_reached(ax, reached, color)
        never = p[~np.isfinite(p["time_to_target_s"])]
        if len(never):
            draw_not_reached(ax, never)
        bs = p["effective_batch_size"].astype(float)
        ax.set_xlim(bs.min() / 1.4, bs.max() * 1.4)  # the triangles sit in axes coordinates
        log2_axis(ax, "x")
        ax.set_xlabel("effective batch size B")
        ax.set_ylabel(f"{workload_label(w)}\nwall time to target (s)")
        legend_outside(ax)
    fig.suptitle(
        f"Wall time to reach training loss ≤ {plain(format_targets(target))}\n"
        "median over seeds, per configuration (ids as in the tables)"
    )
    return fig


def _draw_reached(ax, reached: pd.DataFrame, color) -> None:
    ax.scatter(
        reached["effective_batch_size"],
        reached["time_to_target_s"],
        color=color,
        s=30,
        zorder=3,
        label="configuration (median over seeds)",
    )
    best = reached.loc[reached["time_to_target_s"].idxmin()]
    ax.scatter(
        [best["effective_batch_size"]],
        [best["time_to_target_s"]],
        marker="*",
        s=220,
        facecolors="none",
        edgecolors="black",
        linewidths=1.1,
        zorder=4,
        label=f"first there: {plain(best['tag'])} ({best['time_to_target_s']:.3g} s)",
    )
    lo, hi = reached["time_to_target_s"].min(), reached["time_to_target_s"].max()
    if lo > 0:
        ax.set_yscale("log")
        ax.set_ylim(lo / 2, hi * 3)
    ax.set_xscale("log", base=2)
    annotate_ids(
        ax, reached["effective_batch_size"], reached["time_to_target_s"], list(reached["tag"])
    )
