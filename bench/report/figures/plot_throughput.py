"""Throughput: samples per second against micro-batch b and effective batch B = b·k."""

from __future__ import annotations

import pandas as pd

from bench.report.figures.axes import (
    log2_axis,
    matches,
    new_figure,
    setup_theme,
    workload_label,
    workload_rows,
)


def throughput(prep, notes: list[str]):
    """One row per workload; one line per accumulation k, median over seeds, min–max band."""
    t = prep.trials[(prep.trials["status"] == "ok") & prep.trials["samples_per_s"].notna()]
    if not len(t):
        notes.append("throughput: no ok trial has samples_per_s")
        return None
    sns = setup_theme()
    workloads = workload_rows(t, notes, "throughput")
    fig, axes = new_figure(len(workloads), 2)
    for r, w in enumerate(workloads):
        d = t[matches(t["workload"], w)].copy()
        d["accumulation"] = "k=" + d["accumulation_steps"].fillna(1).astype(int).astype(str)
        d["precision"] = d["precision"].fillna("?")
        order = sorted(pd.unique(d["accumulation"]), key=lambda s: int(s[2:]))
        style = "precision" if d["precision"].nunique() > 1 else None
        for col, x in enumerate(("micro_batch_size", "effective_batch_size")):
            ax = axes[r, col]
            dd = d[d[x].notna() & (d[x] > 0)]
            if not len(dd):
                continue
            sns.lineplot(
                data=dd,
                x=x,
                y="samples_per_s",
                hue="accumulation",
                hue_order=order,
                style=style,
                estimator="median",
                errorbar=("pi", 100),
                marker="o",
                ax=ax,
                legend=(col == 1),
            )
            log2_axis(ax, "x")
            ax.set_xlabel("micro-batch size b" if col == 0 else "effective batch size B = b·k")
            ax.set_ylabel(f"{workload_label(w)}\nsamples/s" if col == 0 else "")
            ax.set_ylim(bottom=0)
    fig.suptitle("Throughput: median over seeds, band = min–max")
    return fig
