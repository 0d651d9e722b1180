"""Memory a trial adds against micro-batch, per counter, where it is more than noise;
OOM trials and the boundaries ``bench oom`` found."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
    WIDTH,
    bytes_axis,
    compact_bytes,
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
from bench.report.figures.probes import probe_boundaries
from bench.report.memory import COUNTERS, drawn_counters, within
from bench.report.metrics import format_value

COUNTER_STYLE = {
    "peak_reserved_bytes": "-",
    "peak_allocated_bytes": ":",
    "nvml_growth_bytes": "--",
    "cpu_rss_growth_bytes": "-",
    "cpu_peak_rss_bytes": "-",
}


def memory(prep, probes: pd.DataFrame | None, notes: list[str], resolutions: dict):
    """One row per workload: each memory counter of its ok trials (``memory.COUNTERS``)
    whose configurations differ by more than its resolution (``resolutions``, as from
    ``memory.resolutions``), one line per configuration family; crosses where trials ran
    out of memory; the probes of ``probes`` (as from ``load_oom_probes``). A counter
    within its resolution is a note, not a line; None when nothing is left to draw."""
    t = prep.trials
    ok = t[(t["status"] == "ok") & t["micro_batch_size"].notna()]
    oom = t[(t["status"] == "oom") & t["micro_batch_size"].notna()]
    have_probes = probes is not None and len(probes)
    shown = _counters_to_draw(ok, resolutions, notes)
    if not any(shown.values()) and not len(oom) and not have_probes:
        notes.append("memory: no counter differs by more than it resolves; no memory figure")
        return None
    sns = setup_theme()
    from matplotlib.transforms import blended_transform_factory

    workloads = [w for w in workload_rows(t, notes, "memory") if _has_any(w, shown, oom, probes)]
    fig, axes = new_figure(len(workloads), 1, width=WIDTH)
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        d = ok[matches(ok["workload"], w)]
        long = _draw_counters(sns, prep, ax, d, shown.get(w, []))
        if shown.get(w):
            _draw_resolution(ax, d, resolutions.get(w, {}).get(shown[w][0]))
        o = oom[matches(oom["workload"], w)]
        _draw_oom_trials(ax, o, blended_transform_factory(ax.transData, ax.transAxes))
        if have_probes:
            _draw_probes(ax, _probes_of(probes, w))
        _axes(ax, long, o, probes if have_probes else None)
        ax.set_xlabel("micro-batch size b")
        ax.set_ylabel(f"{workload_label(w)}\nmemory a trial adds")
    fig.suptitle(
        "Memory a trial adds against micro-batch: median over seeds, band = min–max;\n"
        "one line per counter and family of configurations alike but for the batch shape"
    )
    return fig


def _counters_to_draw(ok: pd.DataFrame, resolutions: dict, notes: list[str]) -> dict:
    """Per workload, the counters whose configuration medians differ by more than the
    counter resolves; a note for each that does not."""
    shown: dict = {}
    for w, g in ok.groupby("workload", dropna=False, sort=False):
        shown[w] = []
        for c in drawn_counters(g):
            res = resolutions.get(w, {}).get(c)
            medians = g.groupby("config_id")[c].median()
            if res is not None and within(medians, res):
                notes.append(
                    f"memory ({workload_label(w)}): {COUNTERS[c][0]} of every configuration "
                    f"lies within {format_value(medians.max() - medians.min(), 'bytes')} "
                    f"({format_value(medians.min(), 'bytes')} to "
                    f"{format_value(medians.max(), 'bytes')}), below what it resolves, "
                    f"{res.text()}: no difference measured, not drawn"
                )
            else:
                shown[w].append(c)
    return shown


def _has_any(w, shown: dict, oom: pd.DataFrame, probes) -> bool:
    if shown.get(w) or matches(oom["workload"], w).any():
        return True
    return probes is not None and len(_probes_of(probes, w)) > 0


def _draw_counters(sns, prep, ax, d: pd.DataFrame, counters: list[str]) -> pd.DataFrame:
    """One line per (counter, configuration family); returns the long table drawn."""
    if not counters or not len(d):
        return pd.DataFrame()
    cids = [c for c in prep.configs["config_id"] if c in set(d["config_id"])]
    fam = families(prep, cids)
    long = d.assign(family=d["config_id"].map(fam).map(plain)).melt(
        id_vars=["micro_batch_size", "family"],
        value_vars=counters,
        var_name="counter",
        value_name="bytes",
    )
    long = long.dropna(subset=["bytes"])
    long["counter"] = long["counter"].map(lambda c: COUNTERS[c][0])
    styles = {COUNTERS[c][0]: COUNTER_STYLE[c] for c in counters}
    sns.lineplot(
        data=long,
        x="micro_batch_size",
        y="bytes",
        hue="family" if long["family"].nunique() > 1 else None,
        hue_order=family_order(long["family"]) if long["family"].nunique() > 1 else None,
        style="counter",
        dashes={k: _dash(v) for k, v in styles.items()},
        estimator="median",
        errorbar=("pi", 100),
        marker="o",
        ax=ax,
    )
    return long


def _draw_resolution(ax, d: pd.DataFrame, res) -> None:
    """A band from the lowest configuration median up by the counter's resolution: a
    point inside it is not told apart from the lowest."""
    if res is None or not res.bytes:
        return
    lowest = float(d.groupby("config_id")[res.column].median().min())
    ax.axhspan(
        lowest,
        lowest + res.bytes,
        color="0.88",
        zorder=0,
        label=f"resolution above the lowest: {compact_bytes(res.bytes)}",
    )


def _dash(style: str):
    return {"-": "", ":": (1, 2), "--": (4, 2)}[style]


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
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        legend_outside(ax, handles=handles, labels=labels)


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
