"""Throughput against memory, coloured by tail loss, with the Pareto front circled."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
    WIDTH,
    annotate_ids,
    bytes_axis,
    matches,
    new_figure,
    setup_theme,
    workload_label,
    workload_rows,
)
from bench.report.memory import COUNTERS

GREY = (0.6, 0.6, 0.6, 1)  # a configuration without a tail loss
# The low (best) losses dark; the top of the map cut off, where it fades into the page.
CMAP_RANGE = (0.0, 0.8)


def pareto(summary: pd.DataFrame, notes: list[str], tolerance: dict | None = None):
    """``summary`` as from ``tables.config_summary`` (its ``pareto`` column marks the
    front); ``tolerance`` per workload (``pareto.tolerances``) draws the memory tie band."""
    d = summary[summary["samples_per_s"].notna() & summary["trial_memory_bytes"].notna()]
    if not len(d):
        notes.append("throughput vs memory: no configuration has both samples/s and memory")
        return None
    sns = setup_theme()
    import matplotlib as mpl

    # One row per workload: each has its own front (pareto.pareto_mask) and its own
    # loss scale, so neither the circles nor the colours compare across workloads.
    workloads = workload_rows(d, notes, "throughput vs memory")
    fig, axes = new_figure(len(workloads), 1, height=4.2, width=WIDTH * 0.75)
    full = sns.color_palette("rocket", as_cmap=True)
    cmap = mpl.colors.ListedColormap(full(np.linspace(*CMAP_RANGE, 256)))
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        dw = d[matches(d["workload"], w)]
        loss_tie = (tolerance or {}).get(w, {}).get("tail_loss", 0.0)
        norm = _draw_points(ax, dw, cmap, loss_tie)
        _draw_front(ax, dw[dw["pareto"]])
        tie = (tolerance or {}).get(w, {}).get("trial_memory_bytes", 0.0)
        _memory_axis(ax, dw, tie)
        if dw["samples_per_s"].min() > 0:
            ax.set_yscale("log")
        annotate_ids(ax, dw["trial_memory_bytes"], dw["samples_per_s"], list(dw["config_tag"]))
        ax.set_ylabel(f"{workload_label(w)}\nsamples/s (median over seeds)")
        if norm is not None:
            sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
            bar = fig.colorbar(sm, ax=ax)
            bar.set_label("tail loss (median; dark = low)")
            bar.formatter.set_useOffset(False)  # "1e-8+1.028" reads as nothing
    fig.suptitle(
        "Throughput against memory; circled: the Pareto front per workload\n"
        "over samples/s ↑, memory ↓, tail loss ↓ (ties within noise); labels: configuration ids"
    )
    return fig


def _draw_points(ax, dw: pd.DataFrame, cmap, loss_tie: float = 0.0):
    """Every configuration, coloured by its tail loss; returns the norm (None: one
    colour, where the losses are alike within ``loss_tie`` or a millionth, and a note
    says so: a colour scale over rounding noise would rank noise)."""
    import matplotlib as mpl

    loss = dw["tail_loss"].astype(float)
    norm = None
    spread = loss.max() - loss.min() if loss.notna().any() else np.nan
    if spread <= max(loss_tie, 1e-6 * abs(loss.max())):
        colors = [cmap(0.3) if pd.notna(v) else GREY for v in loss]
        note = f"tail loss alike in all: {loss.min():.4g} (within {max(spread, 0):.2g}), one colour"
        ax.set_title(note, loc="right", fontsize=7, color="0.3")
    elif loss.notna().any():
        hi = loss.max() if loss.max() > loss.min() else loss.min() + 1
        norm = mpl.colors.Normalize(loss.min(), hi)
        colors = [cmap(norm(v)) if pd.notna(v) else GREY for v in loss]
    else:
        colors = ["0.4"] * len(dw)
    ax.scatter(
        dw["trial_memory_bytes"],
        dw["samples_per_s"],
        c=colors,
        s=46,
        zorder=3,
        edgecolors="0.15",
        linewidths=0.6,
    )
    return norm


def _draw_front(ax, front: pd.DataFrame) -> None:
    if len(front):
        ax.scatter(
            front["trial_memory_bytes"],
            front["samples_per_s"],
            s=170,
            facecolors="none",
            edgecolors="black",
            linewidths=1.3,
            zorder=4,
        )


def _memory_axis(ax, dw: pd.DataFrame, tie: float) -> None:
    """Bytes on x; where every configuration lies within the memory tolerance, an x
    range as wide as that tolerance around them, shaded and named: no false spread."""
    x = dw["trial_memory_bytes"].astype(float)
    if tie > 0 and x.max() - x.min() <= tie:
        mid = (x.max() + x.min()) / 2
        ax.axvspan(mid - tie / 2, mid + tie / 2, color="0.92", zorder=0)
        ax.set_xlim(mid - tie, mid + tie)
        ax.text(
            0.5,
            0.02,
            "all within the memory resolution: no difference measured",
            transform=ax.transAxes,
            ha="center",
            fontsize=7,
            color="0.3",
        )
    bytes_axis(ax, "x")
    ax.set_xlabel("memory a trial adds (" + _memory_source(dw) + ")")


def _memory_source(d: pd.DataFrame) -> str:
    src = d["trial_memory_source"].dropna().unique()
    names = [COUNTERS[s][0] if s in COUNTERS else str(s) for s in src]
    return ", ".join(names) if names else "?"
