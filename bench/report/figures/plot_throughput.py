"""Throughput: samples per second against micro-batch b and effective batch B = b·k."""

from __future__ import annotations

from bench.report.figures.axes import (
    legend_outside,
    log2_axis,
    matches,
    new_figure,
    plain,
    setup_theme,
    workload_label,
    workload_rows,
)
from bench.report.figures.families import families


def throughput(prep, notes: list[str]):
    """One row per workload; one line per configuration family (``families``), each
    point one configuration: median over its seeds, band = min–max."""
    t = prep.trials[(prep.trials["status"] == "ok") & prep.trials["samples_per_s"].notna()]
    if not len(t):
        notes.append("throughput: no ok trial has samples_per_s")
        return None
    sns = setup_theme()
    workloads = workload_rows(t, notes, "throughput")
    fig, axes = new_figure(len(workloads), 2)
    for r, w in enumerate(workloads):
        d = t[matches(t["workload"], w)].copy()
        cids = [c for c in prep.configs["config_id"] if c in set(d["config_id"])]
        d["family"] = d["config_id"].map(families(prep, cids)).map(plain)
        order = sorted(d["family"].unique())
        for col, x in enumerate(("micro_batch_size", "effective_batch_size")):
            ax = axes[r, col]
            dd = d[d[x].notna() & (d[x] > 0)]
            if not len(dd):
                continue
            sns.lineplot(
                data=dd,
                x=x,
                y="samples_per_s",
                hue="family",
                hue_order=order,
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
            if col == 1:
                legend_outside(ax, title="configurations alike but for b, k, B")
    fig.suptitle(
        "Throughput: one line per family of configurations alike but for the batch shape; "
        "median over seeds, band = min–max"
    )
    return fig
