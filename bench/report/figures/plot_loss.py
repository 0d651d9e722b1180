"""Loss curves: training loss against optimizer steps, samples seen and wall time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.report import curves
from bench.report.figures.axes import (
    legend_outside,
    legend_text,
    matches,
    new_figure,
    setup_theme,
    workload_label,
    workload_rows,
)

MAX_LEGEND_CONFIGS = 10
MODE_STYLE = {"sgd": ":", "mbgd": "-", "bgd": "--"}
ACCUM_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@dataclass(frozen=True)
class _Colors:
    """A colour per configuration: one each (``norm`` None) when few enough to name in a
    legend, else by log2 effective batch size on a colour bar."""

    palette: dict
    norm: object = None
    cmap: object = None


def loss_curves(prep, binned: pd.DataFrame, notes: list[str]):
    """One row per workload, one column per x axis of ``curves.X_AXES``."""
    if not len(binned):
        notes.append("loss curves: no steps table")
        return None
    sns = setup_theme()
    trials = prep.trials[prep.trials["trial_key"].isin(set(binned["trial_key"]))]
    workloads = workload_rows(trials, notes, "loss curves")
    fig, axes = new_figure(len(workloads), 3)
    configs = prep.configs.set_index("config_id")
    for r, w in enumerate(workloads):
        t = trials[matches(trials["workload"], w)]
        cids = [c for c in prep.configs["config_id"] if c in set(t["config_id"])]
        colors = _colors(sns, configs, cids)
        accum_values = sorted(
            {int(k) for k in configs.loc[cids, "accumulation_steps"].dropna() if k > 1}
        )
        accum_marker = {
            k: ACCUM_MARKERS[i % len(ACCUM_MARKERS)] for i, k in enumerate(accum_values)
        }
        b = binned[binned["trial_key"].isin(set(t["trial_key"]))]
        for col, (x, xlabel) in enumerate(curves.X_AXES.items()):
            ax = axes[r, col]
            bands, partial = curves.config_bands(b, t, x)
            drawn = [
                _draw_config(ax, bands, partial, cid, configs.loc[cid], colors, accum_marker)
                for cid in cids
            ]
            _scales(ax, bands, partial, [d for d in drawn if d is not None])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{workload_label(w)}\ntraining loss" if col == 0 else "")
        _legend(fig, axes[r, 2], colors, accum_marker)
    fig.suptitle(
        "Training loss: mean over seeds with min–max band where every seed ran, faint: the "
        "seeds left after one stopped\n(line style = sgd/mbgd/bgd, markers = accumulation k > 1)"
    )
    return fig


def _colors(sns, configs: pd.DataFrame, cids: list) -> _Colors:
    if len(cids) <= MAX_LEGEND_CONFIGS:
        return _Colors(dict(zip(cids, sns.color_palette("tab10", len(cids)), strict=True)))
    import matplotlib as mpl

    bs = configs.loc[cids, "effective_batch_size"].astype(float)
    lo, hi = np.log2(bs.min()), np.log2(bs.max())
    norm = mpl.colors.Normalize(lo, hi if hi > lo else lo + 1)
    cmap = sns.color_palette("viridis", as_cmap=True)
    palette = {c: cmap(norm(np.log2(configs.loc[c, "effective_batch_size"]))) for c in cids}
    return _Colors(palette, norm, cmap)


def _draw_config(ax, bands, partial, cid, c: pd.Series, colors: _Colors, accum_marker: dict):
    """One configuration's mean line and band, and its seeds past a seed's end; returns
    the x values drawn (None when the configuration has no band on this axis)."""
    d = bands[bands["config_id"] == cid]
    if not len(d):
        return None
    k = int(c["accumulation_steps"]) if pd.notna(c["accumulation_steps"]) else 1
    style = {"color": colors.palette[cid], "linestyle": MODE_STYLE.get(c["mode"], "-")}
    ax.plot(
        d["x"],
        d["mean"],
        **style,
        linewidth=1.4,
        marker=accum_marker.get(k),
        markevery=max(1, len(d) // 8),
        markersize=4,
        label=legend_text(c["config_short"]),
    )
    ax.fill_between(d["x"], d["lo"], d["hi"], color=colors.palette[cid], alpha=0.18, linewidth=0)
    # Where not every seed has a value, the seeds that do, each on its own.
    for _, one in partial[partial["config_id"] == cid].groupby("trial_key"):
        ax.plot(one["x"], one["loss"], **style, linewidth=0.7, alpha=0.45)
    return d["x"]


def _scales(ax, bands: pd.DataFrame, partial: pd.DataFrame, drawn: list) -> None:
    """Log x when every drawn x is positive; log y when the loss spans more than 10x."""
    if all(bool((x > 0).all()) for x in drawn) and len(bands):
        ax.set_xscale("log")
    m = np.r_[bands["mean"].to_numpy(dtype=float), partial["loss"].to_numpy(dtype=float)]
    m = m[np.isfinite(m)]
    if len(m) and m.min() > 0 and m.max() / m.min() > 10:
        ax.set_yscale("log")


def _legend(fig, ax, colors: _Colors, accum_marker: dict) -> None:
    """Configurations by name; or, when too many to name, a batch-size colour bar and a
    key to line styles (mode) and markers (accumulation)."""
    if colors.norm is None:
        legend_outside(ax)
        return
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    sm = mpl.cm.ScalarMappable(norm=colors.norm, cmap=colors.cmap)
    # Below the axes: the legend of line styles takes the space to the right.
    cb = fig.colorbar(sm, ax=ax, location="bottom", shrink=0.8)
    cb.set_label("log2 effective batch B")
    handles = [Line2D([], [], color="0.3", linestyle=s, label=m) for m, s in MODE_STYLE.items()]
    handles += [
        Line2D([], [], color="0.3", marker=mk, linestyle="", label=f"k={k}")
        for k, mk in accum_marker.items()
    ]
    legend_outside(ax, handles=handles)
