"""Steps-to-target per trial and the critical-batch fit.

McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch Training",
eq. 2.11: the optimizer steps S and training samples E = B*S needed to reach a fixed
loss trade off as

    (S / S_min - 1) (E / E_min - 1) = 1,   i.e.   S(B) = S_min (1 + B_crit / B),
                                                  E(B) = E_min (1 + B / B_crit),

with E_min = S_min * B_crit. Below B_crit, doubling B nearly halves the steps (perfect
scaling: S ∝ 1/B); above it, steps stop shrinking and samples grow.

Steps-to-target is read from the *training* loss of the steps table, which is noisy: a
window of B samples has a loss with variance ∝ 1/B. So each trial's loss is smoothed by
a centred mean over k = ceil(W / B) steps, W = the largest effective batch in the
results (capped so that a window is at most 5 % of the trial's steps): every smoothed
point then averages about the same number of samples, and a small-batch run is not
credited with the first lucky dip below the target. The window is centred, not
trailing: a trailing mean lags the curve by k/2 steps, which measurably inflated the
small-batch steps (and so B_crit, by ~4 % on synthetic curves); a centred mean of a
smooth curve is off only by its curvature (second order in k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.report.prepare import step_groups


@dataclass(frozen=True)
class CriticalBatchFit:
    s_min: float
    b_crit: float
    points: int
    rms_log_error: float  # root-mean-square residual of log S (natural log)
    b_lo: float  # smallest and largest B fitted
    b_hi: float

    @property
    def e_min(self) -> float:
        return self.s_min * self.b_crit

    @property
    def bound(self) -> str | None:
        """'>' when the fitted B_crit lies above every measured B, '<' when below, None
        when inside. Far below B_crit S ≈ E_min / B, far above it S ≈ S_min: each side
        alone fixes one of the two products, and B_crit is where the two asymptotes meet.
        Only measured B on both sides locate it; from one side the fit is near-perfect
        for any large (or small) enough B_crit, and the value it picks is set by noise
        (a planted 20000 measured up to B = 256 came back as 8.6e3, rms error 0.006)."""
        if self.b_crit > self.b_hi:
            return ">"
        if self.b_crit < self.b_lo:
            return "<"
        return None

    def b_crit_text(self) -> str:
        """The fitted value, or the bound the measured batch sizes support."""
        if self.bound == ">":
            return f"B_crit > {self.b_hi:g}"
        if self.bound == "<":
            return f"B_crit < {self.b_lo:g}"
        return f"B_crit ≈ {self.b_crit:.3g}"

    def bound_text(self) -> str:
        """A bound with what it means and what the data do determine ('' when located)."""
        if self.bound == ">":
            return (
                f"{self.b_crit_text()} samples: steps still fall ~1/B up to the largest B "
                f"measured, so B_crit is not located (E_min ≈ {self.e_min:.3g} samples); "
                "measure larger batches to find it"
            )
        if self.bound == "<":
            return (
                f"{self.b_crit_text()} samples: steps barely fall with B from the smallest B "
                f"measured on, so B_crit is not located (S_min ≈ {self.s_min:.3g} steps); "
                "measure smaller batches to find it"
            )
        return ""

    def steps(self, big_b: np.ndarray | float) -> np.ndarray | float:
        return self.s_min * (1.0 + self.b_crit / np.asarray(big_b, dtype=float))

    def samples(self, big_b: np.ndarray | float) -> np.ndarray | float:
        return self.steps(big_b) * np.asarray(big_b, dtype=float)


def smoothing_window(big_b: float, n_steps: int, reference_samples: float) -> int:
    """Centred-mean length in steps (odd) for a trial of effective batch B (see module doc)."""
    if not (big_b > 0) or not math.isfinite(big_b):
        return 1
    k = int(max(1, min(math.ceil(reference_samples / big_b), max(1, n_steps // 20))))
    return k | 1  # odd, so the window has a centre step


@dataclass(frozen=True)
class Smoothed:
    """Per step row: the centred-mean loss; per trial block: start, window, B."""

    starts: np.ndarray
    lengths: np.ndarray
    keys: np.ndarray
    group_b: np.ndarray
    windows: np.ndarray
    group_of_row: np.ndarray
    smoothed: np.ndarray  # mean over the (possibly truncated) window
    full: np.ndarray  # the window is whole at its start side
    clean: np.ndarray  # no non-finite loss inside the window

    @property
    def display(self) -> np.ndarray:
        """What the loss figure draws: the smoothed loss, a gap where it is not finite."""
        return np.where(self.clean, self.smoothed, np.nan)


def smooth_loss(steps: pd.DataFrame, trials: pd.DataFrame) -> Smoothed:
    """Centred mean of each trial's loss over its smoothing window (module doc)."""
    starts, lengths, group_keys = step_groups(steps)
    n = len(steps)
    ends = starts + lengths

    big_b_by_key = dict(zip(trials["trial_key"], trials["effective_batch_size"], strict=False))
    group_b = np.array([float(big_b_by_key.get(k, np.nan)) for k in group_keys])
    finite_b = group_b[np.isfinite(group_b)]
    reference = float(finite_b.max()) if len(finite_b) else 1.0
    windows = np.array(
        [smoothing_window(b, int(m), reference) for b, m in zip(group_b, lengths, strict=True)],
        dtype=np.int64,
    )

    loss = steps["loss"].to_numpy(dtype=float)
    # A non-finite loss (overflow, divergence) makes every window that contains it
    # 'not reached'; windows after it are judged on their own.
    bad = ~np.isfinite(loss)
    csum = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, loss))])
    cbad = np.concatenate([[0], np.cumsum(bad)])
    group_of_row = np.repeat(np.arange(len(starts)), lengths)
    row = np.arange(n)
    half = (windows[group_of_row] - 1) // 2
    lo = row - half
    hi = np.minimum(ends[group_of_row] - 1, row + half)
    # Windows must be whole at a run's start (its first steps are not judged on a few
    # samples); at its end they may shrink to half, so a run that gets there late counts.
    full = lo >= starts[group_of_row]
    lo = np.maximum(lo, starts[group_of_row])
    with np.errstate(invalid="ignore"):
        smoothed = (csum[hi + 1] - csum[lo]) / (hi - lo + 1)
    clean = (cbad[hi + 1] - cbad[lo]) == 0
    return Smoothed(
        starts, lengths, group_keys, group_b, windows, group_of_row, smoothed, full, clean
    )


def steps_to_target(
    steps: pd.DataFrame,
    trials: pd.DataFrame,
    target: float | Mapping,
    smoothed: Smoothed | None = None,
) -> pd.DataFrame:
    """Per trial: first step (and its samples_seen, time_s) at which the smoothed training
    loss is <= target. NaN where the trial never got there (also: diverged, no steps).

    ``steps``: each trial's rows contiguous, in step order (``prepare.lean_steps``). Fully
    vectorised: one pass over all step rows, whatever the number of trials.
    """
    out = pd.DataFrame({"trial_key": trials["trial_key"].to_numpy()})
    out["steps_to_target"] = np.nan
    out["samples_to_target"] = np.nan
    out["time_to_target_s"] = np.nan
    out["smoothing_steps"] = np.nan
    if not len(steps):
        return out
    sm = smoothed if smoothed is not None else smooth_loss(steps, trials)
    starts, group_keys, group_of_row, group_b = sm.starts, sm.keys, sm.group_of_row, sm.group_b
    windows = sm.windows
    if isinstance(target, Mapping):  # per workload: each trial block gets its own
        workload_of = trials.set_index("trial_key")["workload"]
        per_group = np.array(
            [target.get(workload_of.get(k), np.nan) for k in group_keys], dtype=float
        )
        row_target = per_group[group_of_row] if len(per_group) else np.array([], dtype=float)
    else:
        row_target = target
    hit = sm.full & sm.clean & (sm.smoothed <= row_target)

    hit_rows = np.flatnonzero(hit)
    first_hit = np.full(len(starts), -1, dtype=np.int64)
    if len(hit_rows):
        groups_hit = group_of_row[hit_rows]
        first_idx = np.flatnonzero(np.r_[True, groups_hit[1:] != groups_hit[:-1]])
        first_hit[groups_hit[first_idx]] = hit_rows[first_idx]

    step_col = steps["step"].to_numpy(dtype=float)
    samples_col = steps["samples_seen"].to_numpy(dtype=float)
    time_col = steps["time_s"].to_numpy(dtype=float)
    reached = first_hit >= 0
    res = pd.DataFrame(
        {
            "trial_key": group_keys,
            "steps_to_target": np.where(reached, step_col[first_hit], np.nan),
            "samples_to_target": np.where(reached, samples_col[first_hit], np.nan),
            "time_to_target_s": np.where(reached, time_col[first_hit], np.nan),
            "smoothing_steps": windows.astype(float),
        }
    )
    # Older step rows without samples_seen: B * steps is the same number.
    fill = res["samples_to_target"].isna() & res["steps_to_target"].notna()
    res.loc[fill, "samples_to_target"] = res.loc[fill, "steps_to_target"] * group_b[fill.to_numpy()]
    out = out[["trial_key"]].merge(res, on="trial_key", how="left")
    return out


def default_targets(steps: pd.DataFrame, trials: pd.DataFrame) -> dict:
    """Per workload, a target most of its configurations reach (``default_target`` over
    that workload's trials): losses of different workloads are not on one scale."""
    out = {}
    for w, group in trials.groupby("workload", dropna=False, sort=True):
        value = default_target(steps, group)
        if value is not None:
            out[w] = value
    return out


def target_of(targets, workload) -> float | None:
    """The target for ``workload``: ``targets`` is one number for all, or per workload."""
    if isinstance(targets, Mapping):
        return targets.get(workload)
    return targets


def format_targets(targets) -> str:
    if isinstance(targets, Mapping):
        return ", ".join(f"{w}: {v:g}" for w, v in targets.items())
    return f"{targets:g}"


def default_target(steps: pd.DataFrame, trials: pd.DataFrame) -> float | None:
    """A target most configurations reach: the 75th percentile, over configurations, of
    the median final smoothed loss of their ok trials (so about three in four reach it,
    and the rest show as 'not reached'). Rounded to 3 significant digits for reading."""
    ok = trials[trials["status"] == "ok"]
    if not len(steps) or not len(ok):
        return None
    tail = steps[steps["trial_key"].isin(set(ok["trial_key"]))]
    if not len(tail):
        return None
    # Final smoothed loss: mean of each trial's last 5 % of steps (at least one).
    pos = tail.groupby("trial_key", sort=False).cumcount(ascending=False)
    size = tail.groupby("trial_key", sort=False)["step"].transform("size")
    last = tail[pos < np.maximum(1, size // 20)]
    final = last.groupby("trial_key")["loss"].mean()
    per_config = (
        ok.set_index("trial_key")["config_id"]
        .to_frame()
        .join(final.rename("final"), how="inner")
        .groupby("config_id")["final"]
        .median()
    )
    per_config = per_config[np.isfinite(per_config)]
    if not len(per_config):
        return None
    value = float(np.quantile(per_config, 0.75))
    if value == 0:
        return 0.0
    return float(f"{value:.3g}")


def fit_critical_batch(big_b: np.ndarray, steps: np.ndarray) -> CriticalBatchFit | None:
    """Least squares of log S against log(S_min (1 + B_crit / B)) (relative errors: steps
    span orders of magnitude). Needs at least 3 distinct batch sizes; None otherwise or
    when the fit does not converge to positive parameters. A B_crit outside the measured
    batch sizes is not located by the fit: see ``CriticalBatchFit.bound``."""
    from scipy.optimize import least_squares

    big_b = np.asarray(big_b, dtype=float)
    steps = np.asarray(steps, dtype=float)
    ok = np.isfinite(big_b) & np.isfinite(steps) & (big_b > 0) & (steps > 0)
    big_b, steps = big_b[ok], steps[ok]
    # Two parameters: through two distinct B the law always passes exactly (zero residual),
    # so nothing would test it. A third leaves the rms error a degree of freedom to show
    # whether the points follow S_min (1 + B_crit / B) at all.
    if len(np.unique(big_b)) < 3:
        return None
    # Start from the linear form S = a + c / B (a = S_min, c = S_min * B_crit).
    design = np.column_stack([np.ones_like(big_b), 1.0 / big_b])
    (a, c), *_ = np.linalg.lstsq(design, steps, rcond=None)
    s0 = a if a > 0 else float(steps.min())
    b0 = c / a if (a > 0 and c > 0) else float(np.median(big_b))
    log_s = np.log(steps)

    def residual(p: np.ndarray) -> np.ndarray:
        log_smin, log_bcrit = p
        return log_smin + np.log1p(np.exp(log_bcrit) / big_b) - log_s

    sol = least_squares(residual, x0=[math.log(s0), math.log(max(b0, 1e-9))], method="lm")
    if not sol.success:
        return None
    s_min, b_crit = float(np.exp(sol.x[0])), float(np.exp(sol.x[1]))
    if not (math.isfinite(s_min) and math.isfinite(b_crit)):
        return None
    rms = float(np.sqrt(np.mean(sol.fun**2)))
    return CriticalBatchFit(
        s_min=s_min,
        b_crit=b_crit,
        points=len(big_b),
        rms_log_error=rms,
        b_lo=float(big_b.min()),
        b_hi=float(big_b.max()),
    )


POINT_COLUMNS = [
    "config_id",
    "workload",
    "effective_batch_size",
    "steps_to_target",
    "samples_to_target",
    "time_to_target_s",
    "seeds",
    "seeds_reached",
]


def scaling_points(trials: pd.DataFrame, reach: pd.DataFrame | None) -> pd.DataFrame:
    """Per configuration: median steps/samples/time to target over seeds, where a seed
    that never reached counts as +inf (so a configuration whose majority never reached
    has an infinite median: 'not reached'). Only trials that ran (status ok/diverged)."""
    if reach is None:
        return pd.DataFrame({c: [] for c in POINT_COLUMNS})
    df = trials.merge(reach, on="trial_key", how="left")
    df = df[df["status"].isin(["ok", "diverged"])]
    rows = []
    for cid, g in df.groupby("config_id", sort=False):
        s = g["steps_to_target"].fillna(np.inf).to_numpy()
        e = g["samples_to_target"].fillna(np.inf).to_numpy()
        t = g["time_to_target_s"].fillna(np.inf).to_numpy()
        rows.append(
            {
                "config_id": cid,
                "workload": g["workload"].iloc[0],
                "effective_batch_size": g["effective_batch_size"].iloc[0],
                "steps_to_target": float(np.median(s)),
                "samples_to_target": float(np.median(e)),
                "time_to_target_s": float(np.median(t)),
                "seeds": len(g),
                "seeds_reached": int(np.isfinite(s).sum()),
            }
        )
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def best_per_batch(points: pd.DataFrame) -> pd.DataFrame:
    """For the fit: per (workload, B), the fewest steps over configurations (the best
    hyperparameters at that batch size, as McCandlish et al. tune the learning rate per
    batch size). Only reached points."""
    reached = points[np.isfinite(points["steps_to_target"])]
    if not len(reached):
        return reached
    idx = reached.groupby(["workload", "effective_batch_size"], dropna=False)[
        "steps_to_target"
    ].idxmin()
    return reached.loc[idx].sort_values(["workload", "effective_batch_size"])
