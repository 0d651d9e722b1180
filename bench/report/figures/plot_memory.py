"""Peak memory against micro-batch, with OOM trials and the boundaries ``bench oom`` found."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
    MEMORY_SERIES,
    WIDTH,
    bytes_axis,
    compact_bytes,
    log2_axis,
    matches,
    new_figure,
    setup_theme,
    workload_label,
    workload_rows,
)
from bench.report.figures.probes import probe_boundaries


def memory(prep, probes: pd.DataFrame | None, notes: list[str]):
    """One row per workload: every memory counter of the ok trials, crosses where trials
    ran out of memory, and the probes of ``probes`` (as from ``load_oom_probes``)."""
    t = prep.trials
    ok = t[t["status"] == "ok"]
    series = [c for c in MEMORY_SERIES if ok[c].notna().any()]
    oom = t[t["status"] == "oom"]
    have_probes = probes is not None and len(probes)
    if not series and not len(oom) and not have_probes:
        notes.append("memory: no memory columns, OOM trials or OOM probes")
        return None
    sns = setup_theme()
    from matplotlib.transforms import blended_transform_factory

    workloads = workload_rows(t, notes, "memory")
    fig, axes = new_figure(len(workloads), 1, width=WIDTH)
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        d = ok[matches(ok["workload"], w) & ok["micro_batch_size"].notna()]
        long = _draw_series(sns, ax, d, series)
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        o = oom[matches(oom["workload"], w) & oom["micro_batch_size"].notna()]
        _draw_oom_trials(ax, o, trans)
        if have_probes:
            _draw_probes(ax, _probes_of(probes, w))
        if len(long) or len(o) or have_probes:
            _axes(ax, long, o, probes if have_probes else None)
        ax.set_xlabel("micro-batch size b")
        ax.set_ylabel(f"{workload_label(w)}\npeak memory")
    fig.suptitle("Peak memory against micro-batch (median, band = min–max)")
    return fig


def _draw_series(sns, ax, d: pd.DataFrame, series: list[str]) -> pd.DataFrame:
    """One line per memory counter; returns the long table drawn."""
    if not series:
        return pd.DataFrame()
    long = d.melt(
        id_vars=["micro_batch_size"], value_vars=series, var_name="series", value_name="bytes"
    ).dropna(subset=["bytes"])
    if len(long):
        long["series"] = long["series"].map(MEMORY_SERIES)
        sns.lineplot(
            data=long,
            x="micro_batch_size",
            y="bytes",
            hue="series",
            estimator="median",
            errorbar=("pi", 100),
            marker="o",
            ax=ax,
        )
    return long


def _draw_oom_trials(ax, o: pd.DataFrame, trans) -> None:
    """Crosses at the top of the axes (no memory value: the trial never finished)."""
    if not len(o):
        return
    bs = sorted(set(o["micro_batch_size"].astype(float)))
    ax.scatter(
        bs,
        [0.95] * len(bs),
        transform=trans,
        marker="X",
        s=60,
        color="crimson",
        zorder=5,
        label="OOM trial",
        clip_on=False,
    )


def _probes_of(probes: pd.DataFrame, w) -> pd.DataFrame:
    """The probes of workload ``w``, with those that do not name a workload."""
    if "workload" not in probes or probes["workload"].isna().all():
        return probes
    return probes[matches(probes["workload"], w) | probes["workload"].isna()]


def _axes(ax, long: pd.DataFrame, o: pd.DataFrame, probes: pd.DataFrame | None) -> None:
    xs = [*long.get("micro_batch_size", []), *o["micro_batch_size"]]
    if probes is not None:
        xs += list(probes["micro_batch_size"].dropna())
    xs = [float(x) for x in xs if x > 0]
    if xs:  # OOM crosses sit in axes coordinates: widen x so they are inside
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    log2_axis(ax, "x")
    if len(long):
        bytes_axis(ax, "y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _draw_probes(ax, p: pd.DataFrame) -> None:
    """Per capacity a line (a capacity of 0 means 'no cap' in probes.parquet); per search
    the boundary = the smallest micro-batch that did not fit, with the largest ok below,
    and its probes' peaks."""
    if not len(p):
        return
    import seaborn as sns

    for cap in sorted(c for c in set(p["capacity_bytes"].fillna(0)) if c > 0):
        ax.axhline(
            cap, color="0.35", linestyle="--", linewidth=1, label=f"capacity {compact_bytes(cap)}"
        )
    lines = probe_boundaries(p)
    colors = sns.color_palette("dark", max(1, len(lines)))
    for line, color in zip(lines.itertuples(), colors, strict=False):
        if line.bad_outcome is not None:
            _draw_boundary(ax, line, color)
        q = p[p["search"] == line.search]
        for outcome, marker in (("ok", "o"), ("oom", "x"), ("killed", "v")):
            r = q[(q["outcome"] == outcome) & q["peak_bytes"].notna() & (q["peak_bytes"] > 0)]
            if len(r):
                ax.scatter(
                    r["micro_batch_size"],
                    r["peak_bytes"],
                    marker=marker,
                    s=22,
                    zorder=4,
                    color=color,
                    facecolors="none" if marker == "o" else None,
                    label=f"{line.label}: probe {outcome}",
                )


def _draw_boundary(ax, line, color) -> None:
    last_ok = f", fits b={line.last_ok:g}" if np.isfinite(line.last_ok) else ""
    # A kill from outside (the machine's OOM killer, a person) is not the cap's answer,
    # though bench oom counts it as OOM once it happened twice.
    what = "OOM from" if line.bad_outcome == "oom" else "killed (not the cap) at"
    ax.axvline(
        line.first_bad,
        color=color,
        linestyle=":",
        linewidth=1.4,
        label=f"{line.label}: {what} b={line.first_bad:g}{last_ok}",
    )
