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
from bench.report.figures.families import families, family_order


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
        # Each panel's lines join configurations that differ only along its x; where the
        # two panels' families differ (an accumulation sweep), each gets its own legend.
        along = {
            x: families(prep, cids, along=x) for x in ("micro_batch_size", "effective_batch_size")
        }
        both = along["micro_batch_size"] != along["effective_batch_size"]
        for col, (x, fam) in enumerate(along.items()):
            ax = axes[r, col]
            d["family"] = d["config_id"].map(fam).map(plain)
            order = family_order(d["family"])
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
                legend=(col == 1 or both),
            )
            log2_axis(ax, "x")
            ax.set_xlabel("micro-batch size b" if col == 0 else "effective batch size B = b·k")
            ax.set_ylabel(f"{workload_label(w)}\nsamples/s" if col == 0 else "")
            ax.set_ylim(bottom=0)
            if col == 1 or both:
                legend_outside(
                    ax,
                    title="configurations alike but for "
                    + ("b" if both and col == 0 else "b, k, B"),
                )
    fig.suptitle(
        "Throughput: one line per family of configurations alike but for the batch shape; "
        "median over seeds, band = min–max"
    )
    return fig
