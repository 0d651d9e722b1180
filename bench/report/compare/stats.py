"""The statistics of ``bench compare``: Mann–Whitney U and the run-separation rule.

Pure functions of numpy arrays (scipy loads on first use), so the rule can be checked
without any results folder.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05
MIN_RUNS = 2  # runs a side before the within-run step test may call a verdict


def min_two_sided_p(n1: int, n2: int) -> float:
    """Smallest exact two-sided Mann–Whitney p-value for sample sizes n1, n2 (no ties)."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann–Whitney U p-value; 1 for two identical constants."""
    from scipy.stats import mannwhitneyu

    if np.all(a == a[0]) and np.all(b == b[0]) and a[0] == b[0]:
        return 1.0  # identical constants: no evidence of change (scipy would give nan)
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def runs_separated(vb: np.ndarray, vc: np.ndarray, threshold: float) -> int:
    """+1 when every candidate run is above every baseline run by more than the threshold
    (relative), -1 when every one is below by more than it, else 0 (the runs overlap)."""
    if len(vb) < MIN_RUNS or len(vc) < MIN_RUNS or min(vb.min(), vc.min()) <= 0:
        return 0  # a ratio needs positive values; timing metrics are
    if vc.min() > vb.max() * (1 + threshold):
        return 1
    if vc.max() < vb.min() * (1 - threshold):
        return -1
    return 0
