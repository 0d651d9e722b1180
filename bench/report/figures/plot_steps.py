"""Steps and samples to reach the target loss against effective batch B, with the
S(B) = S_min (1 + B_crit / B) fit of McCandlish et al. (2018)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
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
from bench.report.scaling import CriticalBatchFit, format_targets

# (column of the scaling points, axis label): one panel each, left to right.
PANELS = (
    ("steps_to_target", "optimizer steps to target"),
    ("samples_to_target", "samples to target"),
)


def steps_to_target(points: pd.DataFrame, fits: dict, target, notes: list[str]):
    """One row per workload; ``points`` as from ``scaling.scaling_points``, ``fits`` per
    workload (located fits and bounds alike)."""
    if target is None or not len(points):
        notes.append("steps to target: no target loss (no steps table or no ok trial)")
        return None
    sizes = points.loc[points["effective_batch_size"] > 0, "effective_batch_size"].unique()
    if len(sizes) < 2:  # an accumulation sweep: one B split several ways
        shown = ", ".join(f"B = {b:g}" for b in sizes) or "no B"
        notes.append(
            f"steps to target: one effective batch size ({shown}), so no curve against B; "
            "the configurations table has each configuration's steps to target"
        )
        return None
    sns = setup_theme()
    workloads = workload_rows(points, notes, "steps to target")
    fig, axes = new_figure(len(workloads), 2)
    palette = sns.color_palette("deep")
    for r, w in enumerate(workloads):
        p = points[matches(points["workload"], w) & (points["effective_batch_size"] > 0)]
        fit: CriticalBatchFit | None = fits.get(w)
        for col, (ycol, ylabel) in enumerate(PANELS):
            ax = axes[r, col]
            _panel(ax, p, ycol, fit, palette)
            ax.set_xlabel("effective batch size B")
            ax.set_ylabel(f"{workload_label(w)}\n{ylabel}" if col == 0 else ylabel)
        legend_outside(axes[r, 1])
        if fit is not None:
            _fit_box(axes[r, 0], fit)
        elif np.isfinite(p["steps_to_target"]).any():
            notes.append(
                f"steps to target ({workload_label(w)}): fewer than 3 batch sizes reached the "
                "target, no B_crit fit"
            )
    fig.suptitle(
        f"Steps and samples to reach training loss ≤ {plain(format_targets(target))} "
        "(McCandlish et al. 2018: S = S_min(1 + B_crit/B))"
    )
    return fig


def _panel(ax, p: pd.DataFrame, ycol: str, fit: CriticalBatchFit | None, palette) -> None:
    """Configurations that reached the target with the perfect-scaling line and the fit;
    triangles at the top for those that never did."""
    reached = p[np.isfinite(p["steps_to_target"])]
    never = p[~np.isfinite(p["steps_to_target"])]
    if len(reached):
        _draw_reached(ax, p, reached, ycol, fit, palette)
    if len(never):
        draw_not_reached(ax, never)
    log2_axis(ax, "x")
    if len(reached):
        log2_axis(ax, "y")
        lo, hi = reached[ycol].min(), reached[ycol].max()
        ax.set_ylim(lo / 2, hi * 2.5)


def _draw_reached(ax, p, reached, ycol: str, fit: CriticalBatchFit | None, palette) -> None:
    steps = ycol == "steps_to_target"
    ax.scatter(
        reached["effective_batch_size"],
        reached[ycol],
        color=palette[0],
        s=28,
        zorder=3,
        label="configuration (median over seeds)",
    )
    # Perfect scaling through the smallest batch: S ∝ 1/B, E constant.
    ref = reached.sort_values(["effective_batch_size", "steps_to_target"]).iloc[0]
    bb = np.geomspace(p["effective_batch_size"].min(), p["effective_batch_size"].max(), 50)
    s_ref = ref["steps_to_target"] * ref["effective_batch_size"] / bb
    ax.plot(
        bb, s_ref if steps else s_ref * bb, color="0.45", linestyle=":", label="perfect scaling"
    )
    if fit is None:
        return
    ax.plot(
        bb,
        fit.steps(bb) if steps else fit.samples(bb),
        color=palette[3],
        linewidth=1.6,
        label=f"fit S_min(1+B_crit/B): {fit.b_crit_text()}",
    )
    if fit.bound is None:
        ax.axvline(fit.b_crit, color=palette[3], linestyle="--", linewidth=0.8)


def _fit_box(ax, fit: CriticalBatchFit) -> None:
    # Of S_min and E_min, only what the measured side of B_crit determines.
    lines = [fit.b_crit_text() + (" (not located)" if fit.bound else "")]
    if fit.bound != ">":
        lines.append(f"S_min ≈ {fit.s_min:.3g} steps")
    if fit.bound != "<":
        lines.append(f"E_min ≈ {fit.e_min:.3g} samples")
    ax.text(
        0.02,
        0.04,
        "\n".join(lines),
        transform=ax.transAxes,
        fontsize=8,
        va="bottom",
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
    )
