"""Throughput against peak memory, coloured by tail loss, with the Pareto front circled."""

from __future__ import annotations

import pandas as pd

from bench.report.figures.axes import (
    MEMORY_SERIES,
    WIDTH,
    bytes_axis,
    matches,
    new_figure,
    plain,
    setup_theme,
    workload_label,
    workload_rows,
)

GREY = (0.6, 0.6, 0.6, 1)  # a configuration without a tail loss


def pareto(summary: pd.DataFrame, notes: list[str]):
    """``summary`` as from ``tables.config_summary`` (its ``pareto`` column marks the front)."""
    d = summary[summary["samples_per_s"].notna() & summary["peak_memory_bytes"].notna()]
    if not len(d):
        notes.append("throughput vs memory: no configuration has both samples/s and peak memory")
        return None
    sns = setup_theme()
    import matplotlib as mpl

    # One row per workload: each has its own front (tables.pareto_mask) and its own
    # loss scale, so neither the circles nor the colours compare across workloads.
    workloads = workload_rows(d, notes, "throughput vs memory")
    fig, axes = new_figure(len(workloads), 1, height=4.2, width=WIDTH * 0.75)
    cmap = sns.color_palette("rocket_r", as_cmap=True)
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        dw = d[matches(d["workload"], w)]
        loss = dw["tail_loss"].astype(float)
        norm = None
        if loss.notna().any():
            norm = mpl.colors.Normalize(
                loss.min(), loss.max() if loss.max() > loss.min() else loss.min() + 1
            )
            colors = [cmap(norm(v)) if pd.notna(v) else GREY for v in loss]
        else:
            colors = ["0.4"] * len(dw)
        ax.scatter(
            dw["peak_memory_bytes"],
            dw["samples_per_s"],
            c=colors,
            s=40,
            zorder=3,
            edgecolors="white",
            linewidths=0.5,
        )
        _draw_front(ax, dw[dw["pareto"]].sort_values("peak_memory_bytes"))
        bytes_axis(ax, "x")
        if dw["samples_per_s"].min() > 0:
            ax.set_yscale("log")
        ax.set_xlabel("peak memory (" + _memory_source(dw) + ")")
        ax.set_ylabel(f"{workload_label(w)}\nsamples/s (median over seeds)")
        if norm is not None:
            sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
            fig.colorbar(sm, ax=ax).set_label("tail loss (median)")
    fig.suptitle(
        "Throughput against peak memory; Pareto front per workload over samples/s ↑, "
        "memory ↓, tail loss ↓"
    )
    return fig


def _draw_front(ax, front: pd.DataFrame) -> None:
    """Circles around the front; its labels too when few enough to read."""
    if not len(front):
        return
    ax.scatter(
        front["peak_memory_bytes"],
        front["samples_per_s"],
        s=140,
        facecolors="none",
        edgecolors="black",
        linewidths=1.3,
        zorder=4,
        label="Pareto-optimal",
    )
    if len(front) <= 8:
        for _, row in front.iterrows():
            ax.annotate(
                _short(row["config_label"]),
                (row["peak_memory_bytes"], row["samples_per_s"]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=7,
            )
    ax.legend(fontsize=8, loc="best")


def _short(label: str, n: int = 40) -> str:
    label = plain(label)
    return label if len(label) <= n else label[: n - 1] + "…"


def _memory_source(d: pd.DataFrame) -> str:
    src = d["peak_memory_source"].dropna().unique()
    names = [MEMORY_SERIES.get(s, s) for s in src]
    return ", ".join(names) if names else "?"
