"""The Pareto front over samples/s ↑, memory ↓ and tail loss ↓, where noise is a tie.

Medians of configurations differ by noise as well as by what they do: on a CPU sweep
every trial's memory growth lies within a fraction of a MiB, and an exact front would be
decided by which configuration happened to read a page less. So each objective has a
tolerance, and two values within it are a tie:

- samples/s: relative, the median over the workload's configurations with at least 2
  ok seeds of (max - min) / median of their seeds;
- tail loss: absolute, the median over those configurations of max - min;
- memory: the counter's resolution (``memory.Resolution``: the larger of the counter's
  step and the same seed-to-seed range).

Without repeats the spread is unknown and samples/s and loss are taken as measured.
A configuration is dominated when another is at least as good on every objective within
the tolerances and better by more than the tolerance on one (epsilon-dominance, as in
Laumanns et al. 2002). The loss is tail_loss (bench.store.tail_loss), not the last
step's: at B = 1 that is one sample's loss, and a front decided by it would be noise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report.metrics import format_value

# (column, True if higher is better, tolerance kind)
OBJECTIVES = (
    ("samples_per_s", True, "relative"),
    ("trial_memory_bytes", False, "absolute"),
    ("tail_loss", False, "absolute"),
)


def tolerances(trials: pd.DataFrame, resolutions: dict) -> dict:
    """Per workload, per objective column, its tolerance (0 where unknown); ``trials``
    with ``config_id``; ``resolutions`` as from ``memory.resolutions``."""
    out: dict = {}
    ok = trials[trials["status"] == "ok"]
    for w, g in ok.groupby("workload", dropna=False, sort=False):
        tol = {}
        for col, _, kind in OBJECTIVES:
            if col == "trial_memory_bytes":
                res = resolutions.get(w, {}).get(col)
                tol[col] = res.bytes if res is not None else 0.0
                continue
            by = g[["config_id", col]].dropna().groupby("config_id")[col]
            spread = (by.max() - by.min())[by.count() >= 2]
            if kind == "relative":
                spread = spread / by.median()[by.count() >= 2]
            spread = spread[np.isfinite(spread)]
            tol[col] = float(spread.median()) if len(spread) else 0.0
        out[w] = tol
    return out


def tolerance_text(tol: dict) -> str:
    """'samples/s within 3.1 %, memory within 512.00 KiB, tail loss exact'."""
    parts = []
    for col, _, kind in OBJECTIVES:
        v = tol.get(col, 0.0)
        name = {"samples_per_s": "samples/s", "trial_memory_bytes": "memory"}.get(col, "tail loss")
        if not v:
            parts.append(f"{name} exact")
        elif kind == "relative":
            parts.append(f"{name} within {v * 100:.2g} %")
        else:
            parts.append(f"{name} within {format_value(v, 'bytes' if 'bytes' in col else '')}")
    return ", ".join(parts)


def pareto_mask(summary: pd.DataFrame, tolerance: dict | None = None) -> np.ndarray:
    """Non-dominated configurations, within each workload: losses of different workloads
    are not on one scale, nor are their samples (an image is not a sequence), so one
    workload's configurations never dominate another's. ``tolerance``: per workload, as
    from ``tolerances`` (None: exact comparisons)."""
    mask = np.zeros(len(summary), dtype=bool)
    if "workload" not in summary.columns:
        return front(summary, {})
    groups = summary.groupby("workload", dropna=False, sort=False).indices
    for w, idx in groups.items():
        mask[idx] = front(summary.iloc[idx], (tolerance or {}).get(w, {}))
    return mask


def front(summary: pd.DataFrame, tol: dict) -> np.ndarray:
    """Non-dominated rows of one workload: none other is as good on every objective
    (within ``tol``) and better by more than ``tol`` on one. Objectives without any value
    are left out; rows missing a value on a used objective cannot be on the front."""
    if not len(summary):
        return np.zeros(0, dtype=bool)
    used = [o for o in OBJECTIVES if o[0] in summary and summary[o[0]].notna().any()]
    if not used:
        return np.zeros(len(summary), dtype=bool)
    # Everything as "lower is better" with an absolute tolerance: a relative tolerance t
    # on x is an absolute one of log(1 + t) on log x.
    cols, eps = [], []
    for col, higher, kind in used:
        v = summary[col].to_numpy(dtype=float)
        t = float(tol.get(col, 0.0) or 0.0)
        if kind == "relative":
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.log(np.where(v > 0, v, np.nan))
            t = math.log1p(t)
        cols.append(-v if higher else v)
        eps.append(t)
    m, e = np.column_stack(cols), np.array(eps)
    valid = np.isfinite(m).all(axis=1)
    mask = np.zeros(len(summary), dtype=bool)
    others = m[valid]
    for i in np.flatnonzero(valid):
        as_good = np.all(others <= m[i] + e, axis=1)
        better = np.any(others < m[i] - e, axis=1)
        mask[i] = not np.any(as_good & better)
    if valid.any() and not mask.any():
        # Tolerance can make dominance cyclic (a over b over c over a); then the exact
        # front, which is never empty.
        return front(summary, {})
    return mask
