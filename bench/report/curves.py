"""Loss curves downsampled for plotting — never for numbers.

Each trial's steps are cut into at most ``points`` consecutive, geometrically growing
bins and each bin is replaced by its mean (step, samples seen, wall time, loss). A bin mean is a proper
low-pass: a batch-1 curve shows its trend instead of aliased noise, and 10,000 steps
cost 200 points. Then, per configuration, its seeds are interpolated onto one grid and
summarised as mean and min–max band. All numbers in tables come from the full data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.prepare import step_groups

X_AXES = {"step": "optimizer steps", "samples_seen": "samples seen", "time_s": "wall time (s)"}


def bin_means(
    steps: pd.DataFrame, points: int = 200, loss: np.ndarray | None = None
) -> pd.DataFrame:
    """Per trial, up to ``points`` bin means. ``steps`` as from ``prepare.lean_steps``;
    ``loss`` replaces its loss column (the report passes the smoothed loss)."""
    cols = ["trial_key", *X_AXES, "loss"]
    if not len(steps):
        return pd.DataFrame({c: [] for c in cols})
    starts, lengths, keys = step_groups(steps)
    n = len(steps)
    group = np.repeat(np.arange(len(starts)), lengths)
    pos = np.arange(n) - starts[group]
    nbins = np.minimum(lengths, points)
    # Geometric bins, floor(nbins * log(1 + pos) / log(1 + length)): the figures use log
    # x axes, so the first steps get bins of their own and the long tail shares them
    # (linear bins would average a big-batch run's whole descent into its first point).
    with np.errstate(divide="ignore", invalid="ignore"):
        local = np.floor(nbins[group] * np.log1p(pos) / np.log1p(lengths[group])).astype(np.int64)
    offsets = np.r_[0, np.cumsum(nbins)[:-1]]
    bin_id = offsets[group] + local
    total = int(nbins.sum())
    counts = np.bincount(bin_id, minlength=total).astype(float)
    used = counts > 0
    out = {"trial_key": np.repeat(keys, nbins)[used]}
    for c in (*X_AXES, "loss"):
        v = loss if (c == "loss" and loss is not None) else steps[c].to_numpy(dtype=float)
        finite = np.isfinite(v)
        s = np.bincount(bin_id, weights=np.where(finite, v, 0.0), minlength=total)
        m = np.bincount(bin_id, weights=finite.astype(float), minlength=total)
        with np.errstate(invalid="ignore", divide="ignore"):
            # A bin holding a non-finite loss (divergence) is shown as a gap, not averaged away.
            mean = s / m
            mean[m < counts] = np.nan
        out[c] = mean[used]
    return pd.DataFrame(out)


def config_bands(
    binned: pd.DataFrame, trials: pd.DataFrame, x: str, grid_points: int = 200
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per configuration: mean and min/max of the loss over seeds on a common grid of x,
    and the single seeds where not all of them have a value.

    A seed contributes only inside its own x range (a run that stopped early or is
    slower in wall time does not get extrapolated). Mean and band are given only where
    every seed of the configuration has a value (``n == seeds``): after a seed stops
    (diverged, stopped early) the mean of the rest would pass for the configuration's
    mean, biased towards the runs that survived, with a band that collapses to them.
    There the second frame has each remaining seed's own loss (from the last grid point
    that has all seeds, so the lines join the band; NaN elsewhere, a break in a line)."""
    cols = ["config_id", "x", "mean", "lo", "hi", "n", "seeds"]
    part_cols = ["config_id", "trial_key", "x", "loss"]
    if not len(binned):
        return pd.DataFrame({c: [] for c in cols}), pd.DataFrame({c: [] for c in part_cols})
    cfg = trials.set_index("trial_key")["config_id"]
    frames, partial = [], []
    b = binned.assign(config_id=binned["trial_key"].map(cfg))
    for cid, g in b.groupby("config_id", sort=False):
        seeds = [s for _, s in g.groupby("trial_key", sort=False)]
        grid = _grid([s[x].to_numpy() for s in seeds], grid_points)
        if grid is None:
            continue
        ys = np.array([_on_grid(s[x].to_numpy(), s["loss"].to_numpy(), grid) for s in seeds])
        n = np.isfinite(ys).sum(axis=0)
        every = n == len(seeds)
        full = ys[:, every]
        mean, lo, hi = (np.full(len(grid), np.nan) for _ in range(3))
        if full.size:
            mean[every], lo[every] = full.mean(axis=0), full.min(axis=0)
            hi[every] = full.max(axis=0)
        frames.append(
            pd.DataFrame(
                {
                    "config_id": cid,
                    "x": grid,
                    "mean": mean,
                    "lo": lo,
                    "hi": hi,
                    "n": n,
                    "seeds": len(seeds),
                }
            )
        )
        keys = [s["trial_key"].iloc[0] for s in seeds]
        partial += _seeds_past_the_band(cid, keys, grid, ys, (n > 0) & ~every)
    bands = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in cols})
    part = (
        pd.concat(partial, ignore_index=True)
        if partial
        else pd.DataFrame({c: [] for c in part_cols})
    )
    return bands, part


def _grid(xs: list[np.ndarray], points: int) -> np.ndarray | None:
    """The common x grid of a configuration's seeds (None when none has a finite x):
    geometric when every x is positive, as the figures' x axes are logarithmic."""
    xs_finite = [v[np.isfinite(v)] for v in xs]
    if not any(len(v) for v in xs_finite):
        return None
    lo_x = min(v.min() for v in xs_finite if len(v))
    hi_x = max(v.max() for v in xs_finite if len(v))
    if hi_x <= lo_x:
        return np.array([lo_x])
    if lo_x > 0:
        return np.geomspace(lo_x, hi_x, points)
    return np.linspace(lo_x, hi_x, points)


def _on_grid(xv: np.ndarray, yv: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One seed's loss interpolated onto ``grid`` inside its own x range, NaN elsewhere."""
    out = np.full(len(grid), np.nan)
    ok = np.isfinite(xv)
    xv, yv = xv[ok], yv[ok]
    if not len(xv):
        return out
    order = np.argsort(xv, kind="stable")
    xv, yv = xv[order], yv[order]
    inside = (grid >= xv[0]) & (grid <= xv[-1])
    out[inside] = np.interp(grid[inside], xv, yv)
    # Interpolation across a NaN gap would invent values: keep the gap.
    if np.isnan(yv).any():
        nan_x = xv[np.isnan(yv)]
        near = np.searchsorted(xv, grid[inside])
        bad = np.isin(xv[np.clip(near, 0, len(xv) - 1)], nan_x)
        row = out[inside]
        row[bad] = np.nan
        out[inside] = row
    return out


def _seeds_past_the_band(cid, keys: list, grid, ys: np.ndarray, some: np.ndarray) -> list:
    """Frames of the seeds that have values where not every seed does (``some``)."""
    if not some.any():
        return []
    # Each incomplete stretch with its complete neighbours, so the lines start
    # where the band ends (and end where it resumes).
    near = some | np.r_[some[1:], False] | np.r_[False, some[:-1]]
    return [
        pd.DataFrame(
            {"config_id": cid, "trial_key": key, "x": grid, "loss": np.where(near, row, np.nan)}
        )
        for key, row in zip(keys, ys, strict=True)
        if np.isfinite(row[some]).any()  # the seeds that go on
    ]
