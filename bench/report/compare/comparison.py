"""Baseline vs candidate, row by row: a status row where the ok share changed and a row
per metric with its medians, ratio, p-value, the test that produced it and the verdict
(the rule: ``bench.report.compare``'s docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import format_bytes
from bench.errors import BenchError
from bench.report.compare.differences import caveats
from bench.report.compare.sides import describe, load_side, one_side_keys
from bench.report.compare.stats import (
    ALPHA,
    MIN_RUNS,
    mann_whitney_p,
    min_two_sided_p,
    runs_separated,
)
from bench.report.metrics import Metric
from bench.report.prepare import STATUSES, Prepared

MIN_STEP_SAMPLES = 20
MAX_STEP_SAMPLES = 5000  # evenly thinned beyond this: the test is O(n log n), the answer the same
UNTESTED = "untested"
# Row order: what needs attention first.
VERDICT_RANK = {"regressed": 0, "improved": 1, "~": 2, "new": 3, "missing": 4, "n/a": 5}


@dataclass
class Row:
    config_id: str
    label: str
    metric: str
    baseline: str = ""
    candidate: str = ""
    ratio: float | None = None
    p_value: float | None = None
    basis: str = ""
    verdict: str = "~"
    tested: bool = True  # False: the rule could not call a change here, whatever the data


@dataclass
class Comparison:
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)
    baseline_desc: str = ""
    candidate_desc: str = ""
    threshold: float = 0.05

    @property
    def regressed(self) -> bool:
        return any(r.verdict == "regressed" for r in self.rows)

    def counts(self) -> dict[str, int]:
        """Rows per verdict; ``~`` rows that could not be tested count as ``untested``."""
        out: dict[str, int] = {}
        for r in self.rows:
            v = UNTESTED if r.verdict == "~" and not r.tested else r.verdict
            out[v] = out.get(v, 0) + 1
        return out


def parse_threshold(text: str) -> float:
    """'5%' -> 0.05; '0.05' -> 0.05. A bare number must be a fraction in (0, 1)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise BenchError(
            f"--threshold: cannot read {text!r}; give a percentage like 5% or a fraction like 0.05"
        ) from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise BenchError(f"--threshold must be between 0% and 100% (e.g. 5% or 0.05), got {text!r}")
    return value


def compare(
    baseline: str | Path,
    candidate: str | Path,
    *,
    metrics: list[Metric],
    threshold: float = 0.05,
    alpha: float = ALPHA,
) -> Comparison:
    side_b, side_c = load_side(baseline, "baseline"), load_side(candidate, "candidate")
    base, cand = side_b.prep, side_c.prep
    if not set(base.trials["config_id"]) & set(cand.trials["config_id"]):
        # Nothing matched: every row would be new/missing and exit 0 would read as a pass.
        one_side = one_side_keys(side_b, side_c)
        raise BenchError(
            f"no configuration in common between baseline {describe(baseline, base)} and "
            f"candidate {describe(candidate, cand)}"
            + (f"; config keys on one side only: {one_side}" if one_side else "")
        )
    warnings = caveats(baseline, candidate, side_b, side_c)
    rows = _rows(base, cand, metrics, threshold, alpha)
    # stable: configuration order within; tested ~ rows before untested ones
    rows.sort(key=lambda r: (VERDICT_RANK.get(r.verdict, 9), not r.tested))
    return Comparison(
        rows=rows,
        warnings=warnings,
        threshold=threshold,
        baseline_desc=describe(baseline, base),
        candidate_desc=describe(candidate, cand),
    )


def _rows(
    base: Prepared, cand: Prepared, metrics: list[Metric], threshold: float, alpha: float
) -> list[Row]:
    """Per configuration of either side (baseline's order first): new/missing, or its
    status row (when the statuses differ) and metric rows."""
    base_ids, cand_ids = set(base.trials["config_id"]), set(cand.trials["config_id"])
    labels = dict(zip(cand.trials["config_id"], cand.trials["config_label"], strict=False))
    labels.update(dict(zip(base.trials["config_id"], base.trials["config_label"], strict=False)))
    order = list(dict.fromkeys([*base.configs["config_id"], *cand.configs["config_id"]]))
    rows: list[Row] = []
    for cid in order:
        label = labels[cid]
        if cid not in cand_ids:
            rows.append(Row(cid, label, "-", verdict="missing", basis="only in baseline"))
            continue
        if cid not in base_ids:
            rows.append(Row(cid, label, "-", verdict="new", basis="only in candidate"))
            continue
        tb = base.trials[base.trials["config_id"] == cid]
        tc = cand.trials[cand.trials["config_id"] == cid]
        status = _status_row(cid, label, tb, tc)
        if status.baseline != status.candidate:  # unchanged statuses would only add noise
            rows.append(status)
        okb, okc = tb[tb["status"] == "ok"], tc[tc["status"] == "ok"]
        for m in metrics:
            row = _metric_row(cid, label, m, (base, okb), (cand, okc), threshold, alpha)
            if row is not None:
                rows.append(row)
    return rows


def _status_text(t: pd.DataFrame) -> str:
    c = t["status"].value_counts()
    names = [s for s in STATUSES if s in c.index] + sorted(set(c.index) - set(STATUSES))
    return ", ".join(f"{s} {int(c[s])}" for s in names)


def _status_row(cid: str, label: str, tb: pd.DataFrame, tc: pd.DataFrame) -> Row:
    fb = float((tb["status"] == "ok").mean())
    fc = float((tc["status"] == "ok").mean())
    verdict = "regressed" if fc < fb else ("improved" if fc > fb else "~")
    return Row(
        cid, label, "status", _status_text(tb), _status_text(tc), None, None, "ok share", verdict
    )


# One side of a metric row: its Prepared results and its ok trials of the configuration.
_SideTrials = tuple[Prepared, pd.DataFrame]


def _metric_row(
    cid: str, label: str, m: Metric, b: _SideTrials, c: _SideTrials, threshold, alpha
) -> Row | None:
    vb = b[1][m.name].dropna().to_numpy(dtype=float)
    vc = c[1][m.name].dropna().to_numpy(dtype=float)
    if not len(vb) and not len(vc):
        return None  # not measured on either side (e.g. NVML on CPU): no row
    if not len(vb) or not len(vc):
        return Row(
            cid,
            label,
            m.name,
            _med(vb, m),
            _med(vc, m),
            None,
            None,
            "measured on one side only",
            "n/a",
        )
    mb, mc = float(np.median(vb)), float(np.median(vc))
    ratio = mc / mb if mb != 0 else (1.0 if mc == 0 else math.inf)
    change = ratio - 1.0
    p, basis, tested, runs_agree = _significance(m, vb, vc, b, c, change, threshold, alpha)
    verdict = "~"
    floor = _step_floor(m, b[1], c[1])
    if floor and abs(mc - mb) <= floor:
        basis = f"{basis}; within the counter's step, {format_bytes(floor)}"
    elif abs(change) > threshold and runs_agree and p is not None and p < alpha:
        better = change > 0 if m.higher_is_better else change < 0
        verdict = "improved" if better else "regressed"
    return Row(cid, label, m.name, _med(vb, m), _med(vc, m), ratio, p, basis, verdict, tested)


def _step_floor(m: Metric, tb: pd.DataFrame, tc: pd.DataFrame) -> float:
    """The smallest difference of ``m`` that its counter shows (0: no such floor). Only
    ``peak_memory_bytes``, the memory a trial adds, has one: near zero, a few pages of
    RSS make any ratio."""
    if m.name != "peak_memory_bytes":
        return 0.0
    steps = [t["trial_memory_step_bytes"].max() for t in (tb, tc) if "trial_memory_step_bytes" in t]
    return float(np.nanmax(steps)) if steps and not np.all(np.isnan(steps)) else 0.0


def _significance(m: Metric, vb, vc, b: _SideTrials, c: _SideTrials, change, threshold, alpha):
    """(p-value or None, basis text, tested, runs agree with the change): rules 1-3 of
    the package docstring, over repeats ``vb``/``vc`` or, failing that, within-run steps."""
    if min_two_sided_p(len(vb), len(vc)) < alpha:
        return mann_whitney_p(vb, vc), f"repeats {len(vb)}/{len(vc)}", True, True
    sb = per_step_values(b[0], list(b[1]["trial_key"]), m)
    sc = per_step_values(c[0], list(c[1]["trial_key"]), m)
    if len(sb) < MIN_STEP_SAMPLES or len(sc) < MIN_STEP_SAMPLES:
        return None, f"untested ({len(vb)}/{len(vc)} repeats)", False, True
    p = mann_whitney_p(sb, sc)
    basis = f"within-run steps {len(sb)}/{len(sc)}, {len(vb)}/{len(vc)} runs"
    # Steps are pseudo-replicates of their run: only runs that do not overlap by the
    # threshold may call a change (package docstring, rule 2).
    if min(len(vb), len(vc)) < MIN_RUNS:
        return p, basis + " (untested)", False, False
    side = runs_separated(vb, vc, threshold)
    return p, basis, True, side != 0 and side == np.sign(change)


def per_step_values(prep: Prepared, trial_keys: list[str], metric: Metric) -> np.ndarray:
    """Per-step samples of a timing metric, pooled over trials, warm-up steps excluded."""
    if metric.per_step is None or not len(prep.steps):
        return np.array([])
    steps = prep.steps[prep.steps["trial_key"].isin(set(trial_keys))]
    trials = prep.trials.set_index("trial_key")
    out = []
    for key, g in steps.groupby("trial_key", sort=False):
        t = g["time_s"].to_numpy(dtype=float)
        if len(t) < 2:
            continue
        dt = np.diff(np.r_[0.0, t])
        samples = g["samples"].to_numpy(dtype=float)
        n_steps, timed = trials.at[key, "optimizer_steps"], trials.at[key, "timed_steps"]
        warm = (
            int(n_steps - timed)
            if pd.notna(n_steps) and pd.notna(timed) and n_steps >= timed
            else 3
        )
        dt, samples = dt[warm:], samples[warm:]
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric.per_step == "step_time_ms":
                v = 1000.0 * dt
            elif metric.per_step == "steps_per_s":
                v = 1.0 / dt
            else:
                v = samples / dt
        out.append(v[np.isfinite(v) & (dt > 0)])
    if not out:
        return np.array([])
    v = np.concatenate(out)
    if len(v) > MAX_STEP_SAMPLES:
        v = v[np.linspace(0, len(v) - 1, MAX_STEP_SAMPLES).astype(int)]
    return v


def _med(v: np.ndarray, m: Metric) -> str:
    return m.format(float(np.median(v))) if len(v) else "-"
