"""The gradient noise scale B_simple over training, beside the B_crit fitted from
steps-to-target (McCandlish et al. 2018: B_simple predicts B_crit)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import (
    legend_outside,
    legend_text,
    matches,
    new_figure,
    setup_theme,
    workload_label,
    workload_rows,
)

MAX_COLORS = 10


def noise_scale(prep, fits: dict, notes: list[str]):
    """One row per workload: B_simple against samples seen, one line per configuration
    (median over seeds at each sampled step); ``fits`` per workload, located fits only."""
    noise = prep.noise
    positive = noise[noise["b_simple"] > 0] if len(noise) else noise
    if not len(positive):
        notes.append(
            "gradient noise scale: no step has a positive b_simple value (bench run samples "
            "it every noise_scale_every steps; null under DDP), figure left out"
        )
        return None
    if len(positive) < len(noise):
        notes.append(
            f"gradient noise scale: {len(noise) - len(positive)} of {len(noise)} sampled "
            "values are ≤ 0 (a noisy |G|² estimate early on) and are not drawn"
        )
    sns = setup_theme()
    trials = prep.trials[prep.trials["trial_key"].isin(set(positive["trial_key"]))]
    workloads = workload_rows(trials, notes, "gradient noise scale")
    fig, axes = new_figure(len(workloads), 1)
    configs = prep.configs.set_index("config_id")
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        t = trials[matches(trials["workload"], w)]
        cids = [c for c in prep.configs["config_id"] if c in set(t["config_id"])]
        palette = sns.color_palette("tab10" if len(cids) <= MAX_COLORS else "husl", len(cids))
        rows = positive.merge(t[["trial_key", "config_id"]], on="trial_key")
        for cid, color in zip(cids, palette, strict=True):
            _draw_config(ax, rows[rows["config_id"] == cid], configs.loc[cid], color)
        fit = fits.get(w)
        if fit is not None and np.isfinite(fit.b_crit) and fit.b_crit > 0:
            ax.axhline(
                fit.b_crit,
                color="crimson",
                linestyle="--",
                linewidth=1.2,
                label=f"B_crit (steps-to-target fit) ≈ {fit.b_crit:.3g}",
            )
        ax.set_xscale("log")
        _plain_log_y(ax)
        ax.set_xlabel("samples seen")
        ax.set_ylabel(f"{workload_label(w)}\nB_simple (samples)")
        legend_outside(ax, title="configuration (median over seeds)")
    fig.suptitle(
        "Gradient noise scale B_simple = tr(Σ)/|G|² during training "
        "(McCandlish et al. 2018: B_simple ≈ B_crit)"
    )
    return fig


def _plain_log_y(ax) -> None:
    """Log y with plain-number labels (20, 30, not 2×10¹); minor ticks labelled only
    where the values span less than a decade (else the major ones suffice)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain_number = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.yaxis.set_major_formatter(plain_number)
    lo, hi = ax.dataLim.intervaly
    narrow = lo > 0 and hi / lo < 10
    ax.yaxis.set_minor_formatter(plain_number if narrow else NullFormatter())


def _draw_config(ax, rows: pd.DataFrame, config: pd.Series, color) -> None:
    """One configuration's B_simple: the median over seeds at each sampled step, at the
    seeds' mean samples seen."""
    if not len(rows):
        return
    line = (
        rows.groupby("step", sort=True)
        .agg(x=("samples_seen", "mean"), y=("b_simple", "median"))
        .dropna()
    )
    line = line[line["x"] > 0]
    ax.plot(
        line["x"],
        line["y"],
        color=color,
        linewidth=1.3,
        marker="o",
        markersize=3,
        label=legend_text(config["config_short"]),
    )
