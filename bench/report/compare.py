"""``bench compare BASELINE CANDIDATE``: what changed, and is it real or noise.

Matching. Trials are matched by *configuration*: the trial's ``config_json`` without its
seed, and without every key whose value is the current ``bench.config.TrialConfig``
default, hashed. Dropping defaulted keys is what lets results written before a field
existed match results written after it, when the new field sits at its default (the
old code behaved as the default does); a key set to anything else still tells two
configurations apart, and a key the current TrialConfig does not know is kept. The
``trial_key`` is *not* the matching key: it hashes every key and the seed, so a new field
changes every key; no ``trial_key`` in common only gives a warning. The seeds of a
configuration are its repeats: each side's repeats form one sample, and the two samples
are compared unpaired. When no configuration matches at all nothing can be compared, and
that is an error (exit 2), not a pass.

Verdict (asv's rule, DESIGN habit 7): a metric is ``improved`` or ``regressed`` only if
the candidate's median differs from the baseline's by more than the threshold (relative,
default 5 %) *and* a two-sided Mann–Whitney U test rejects "same distribution" at
alpha = 0.05. Otherwise ``~``. The test runs on

1. the repeats (per-trial values), when there are enough of them for the test to reach
   alpha at all: the smallest two-sided exact p-value with n1, n2 repeats and no ties is
   2 / C(n1 + n2, n1), so 4 vs 4 (p >= 0.029) can call a change and 3 vs 3 (p >= 0.1)
   never can;
2. otherwise, for timing metrics, the per-step samples of all repeats pooled (step
   durations from ``time_s`` differences, warm-up steps excluded; basis ``within-run
   steps``). These are pseudo-replicates: the steps of one run share that run's machine
   state (other load, clocks, thread placement), so their p-value measures "these two
   runs differ", not "this code differs" — identical code run twice on a busy machine
   gets p ~ 1e-15. So the p-value is shown, but the verdict may be called only with at
   least ``MIN_RUNS`` (2) runs a side whose per-run values (the trial's own metric, e.g.
   its samples/s) are separated by more than the threshold: every candidate run differs
   from every baseline run in the same direction by more than the threshold, i.e.
   min(candidate) > max(baseline) * (1 + t) or max(candidate) < min(baseline) * (1 - t).
   The run-to-run spread, not the step-to-step one, then decides. With overlapping runs
   the verdict is ``~``; with one run on a side it is ``~`` and the row is untested;
3. otherwise nothing: the change is shown and the verdict stays ``~``, because one
   noisy sample must never call a regression.

Rows that no rule could call (3., and 2. with fewer than 2 runs a side) are *untested*:
the summary counts them apart from the tested ``~`` rows, since "no significant change"
and "too few repeats to tell" are different answers.

A configuration whose trials ran ok in the baseline but end oom/diverged/failed in the
candidate is ``regressed`` on ``status`` (and the reverse ``improved``): a new OOM is the
regression a training-efficiency PR most needs to see. ``new``/``missing`` rows list
configurations present on one side only; they do not fail the comparison.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.config import TrialConfig
from bench.errors import BenchError
from bench.report.metrics import Metric
from bench.report.prepare import STATUSES, Prepared, config_dict, config_id_of, prepare
from bench.report.tables import markdown_table
from bench.store import load_results

ALPHA = 0.05
MIN_STEP_SAMPLES = 20
MIN_RUNS = 2  # runs a side before the within-run step test may call a verdict
MAX_STEP_SAMPLES = 5000  # evenly thinned beyond this: the test is O(n log n), the answer the same


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


UNTESTED = "untested"


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


def min_two_sided_p(n1: int, n2: int) -> float:
    """Smallest exact two-sided Mann–Whitney p-value for sample sizes n1, n2 (no ties)."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    if np.all(a == a[0]) and np.all(b == b[0]) and a[0] == b[0]:
        return 1.0  # identical constants: no evidence of change (scipy would give nan)
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


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


def config_defaults() -> dict[str, Any]:
    """The current ``TrialConfig`` default of every field (``default_factory`` called)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrialConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _is_default(value: Any, default: Any) -> bool:
    # True == 1 in Python, but a flag and a count are different settings.
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def matching_config(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys at their TrialConfig default: an older result that
    lacks a field added since, at its default, then matches a newer one. Float fields are
    compared as floats: results from before TrialConfig coerced them hold TOML's ints
    (``time_limit_s = 600``), and 600 and 600.0 are one setting."""
    from bench.config import floats_as_floats

    config = floats_as_floats(config)
    return {k: v for k, v in config.items() if not (k in defaults and _is_default(v, defaults[k]))}


@dataclass
class _Side:
    prep: Prepared
    config_keys: set[str]  # every key of the matching configs (for the diagnostics)


def _load(folder: str | Path, what: str) -> _Side:
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"{what}: no results folder at {folder}")
    results = load_results(folder)
    if not len(results.trials):
        raise BenchError(f"{what}: results at {folder} are empty (no trial rows)")
    prep = prepare(results)
    # prepare's config_id hashes every key, so a field added at its default would change
    # every id; compare matches on the config without its defaulted keys instead.
    defaults = config_defaults()
    configs = [matching_config(config_dict(r), defaults) for _, r in prep.trials.iterrows()]
    ids = [config_id_of(d) for d in configs]
    renamed = dict(zip(prep.trials["config_id"], ids, strict=True))
    prep.trials["config_id"] = ids
    prep.configs["config_id"] = prep.configs["config_id"].map(renamed)
    prep.configs = prep.configs.drop_duplicates("config_id").reset_index(drop=True)
    return _Side(prep, {k for d in configs for k in d})


def _one_side_keys(b: _Side, c: _Side) -> str:
    """'pin_memory (candidate only)' etc.: the usual reason two result sets do not match."""
    parts = [f"{k} (baseline only)" for k in sorted(b.config_keys - c.config_keys)]
    parts += [f"{k} (candidate only)" for k in sorted(c.config_keys - b.config_keys)]
    return ", ".join(parts)


# Environment identity: the keys of trials rows / env records that must match for timing
# and memory numbers to be comparable.
_ENV_FIELDS = {
    "device": ("device", "cuda_devices", "device_name", "gpu_name", "cuda_device_name"),
    "cpu": ("cpu_model",),
    "torch": (
        "torch_version",
        "torch",
        "torch.version",
        "torch.__version__",
        "versions.torch",
        "software.torch",
        "packages.torch",
    ),
    "cuda": ("torch_cuda", "cuda_version", "torch.cuda", "versions.cuda", "software.cuda"),
}


def _data_changed(b: pd.DataFrame, c: pd.DataFrame) -> tuple[int, int]:
    """(trials whose data_sha256 differs, trials compared): matched on configuration and
    seed; results written before the column existed are not compared."""
    cols = ["config_id", "seed", "data_sha256"]
    if "data_sha256" not in b.columns or "data_sha256" not in c.columns:
        return 0, 0
    sides = [t[cols].dropna().drop_duplicates(["config_id", "seed"], keep="last") for t in (b, c)]
    m = sides[0].merge(sides[1], on=["config_id", "seed"], suffixes=("_b", "_c"))
    return int((m["data_sha256_b"] != m["data_sha256_c"]).sum()), len(m)


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".lower()
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _env_text(value: object) -> str:
    """A list of devices (e.g. ``cuda_devices: [{"name": ...}, ...]``) as their names."""
    if isinstance(value, list):
        return ", ".join(str(v.get("name", v)) if isinstance(v, dict) else str(v) for v in value)
    return str(value)


def environment(folder: Path, prep: Prepared) -> dict[str, set[str]]:
    """What device / torch / CUDA produced these results: from trials columns (``device``,
    ``torch_version`` where present) and from env records ``<folder>/env/*.json``."""
    env: dict[str, set[str]] = {k: set() for k in _ENV_FIELDS}
    t = prep.trials
    for name, keys in _ENV_FIELDS.items():
        for k in keys:
            if k in t.columns:
                env[name] |= {str(v) for v in t[k].dropna()}
    for path in sorted((folder / "env").glob("*.json")):
        try:
            flat = _flatten(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
        for name, keys in _ENV_FIELDS.items():
            for k in keys:
                if k in flat and flat[k] not in (None, "", []):
                    env[name].add(_env_text(flat[k]))
                    break
    return env


def compare(
    baseline: str | Path,
    candidate: str | Path,
    *,
    metrics: list[Metric],
    threshold: float = 0.05,
    alpha: float = ALPHA,
) -> Comparison:
    side_b, side_c = _load(baseline, "baseline"), _load(candidate, "candidate")
    base, cand = side_b.prep, side_c.prep
    rows: list[Row] = []

    base_ids, cand_ids = set(base.trials["config_id"]), set(cand.trials["config_id"])
    one_side = _one_side_keys(side_b, side_c)
    if not base_ids & cand_ids:
        # Nothing matched: every row would be new/missing and exit 0 would read as a pass.
        raise BenchError(
            f"no configuration in common between baseline {_describe(baseline, base)} and "
            f"candidate {_describe(candidate, cand)}"
            + (f"; config keys on one side only: {one_side}" if one_side else "")
        )

    warnings = []
    env_b, env_c = environment(Path(baseline), base), environment(Path(candidate), cand)
    for name in _ENV_FIELDS:
        if env_b[name] and env_c[name] and env_b[name] != env_c[name]:
            warnings.append(
                f"environments differ — {name} differs: baseline "
                f"{', '.join(sorted(env_b[name]))} vs candidate {', '.join(sorted(env_c[name]))}"
            )
    changed, common = _data_changed(base.trials, cand.trials)
    if changed:
        warnings.append(
            f"training data differ for {changed} of {common} trials in common "
            "(data_sha256: same configuration and seed, other data, e.g. a workload's data "
            "generation changed): their losses are not like for like"
        )
    if not set(base.trials["trial_key"]) & set(cand.trials["trial_key"]):
        seeds_b, seeds_c = set(base.trials["seed"].dropna()), set(cand.trials["seed"].dropna())
        reasons = ["different seeds"] if not seeds_b & seeds_c else []
        if one_side:
            reasons.append(f"config keys on one side only: {one_side}")
        # Same configurations and seeds but other keys: keys at their default came or went.
        why = "; ".join(reasons) or "config keys at their default added or removed"
        warnings.append(
            f"no trial_key in common ({why}); configurations matched without their seed "
            "and without keys at their TrialConfig default"
        )

    labels = dict(zip(cand.trials["config_id"], cand.trials["config_label"], strict=False))
    labels.update(dict(zip(base.trials["config_id"], base.trials["config_label"], strict=False)))
    order = list(dict.fromkeys([*base.configs["config_id"], *cand.configs["config_id"]]))
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
            row = _metric_row(cid, label, m, okb, okc, base, cand, threshold, alpha)
            if row is not None:
                rows.append(row)
    rank = {"regressed": 0, "improved": 1, "~": 2, "new": 3, "missing": 4, "n/a": 5}
    # stable: configuration order within; tested ~ rows before untested ones
    rows.sort(key=lambda r: (rank.get(r.verdict, 9), not r.tested))
    return Comparison(
        rows=rows,
        warnings=warnings,
        threshold=threshold,
        baseline_desc=_describe(baseline, base),
        candidate_desc=_describe(candidate, cand),
    )


def _describe(folder: str | Path, prep: Prepared) -> str:
    return f"{folder} ({len(prep.trials)} trials, {len(prep.configs)} configurations)"


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


def _metric_row(cid, label, m: Metric, okb, okc, base, cand, threshold, alpha) -> Row | None:
    vb = okb[m.name].dropna().to_numpy(dtype=float)
    vc = okc[m.name].dropna().to_numpy(dtype=float)
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
    p, tested, runs_agree = None, True, True
    if min_two_sided_p(len(vb), len(vc)) < alpha:
        p = mann_whitney_p(vb, vc)
        basis = f"repeats {len(vb)}/{len(vc)}"
    else:
        sb = per_step_values(base, list(okb["trial_key"]), m)
        sc = per_step_values(cand, list(okc["trial_key"]), m)
        if len(sb) >= MIN_STEP_SAMPLES and len(sc) >= MIN_STEP_SAMPLES:
            p = mann_whitney_p(sb, sc)
            basis = f"within-run steps {len(sb)}/{len(sc)}, {len(vb)}/{len(vc)} runs"
            # Steps are pseudo-replicates of their run: only runs that do not overlap by
            # the threshold may call a change (module docstring, rule 2).
            if min(len(vb), len(vc)) < MIN_RUNS:
                basis += " (untested)"
                tested, runs_agree = False, False
            else:
                side = runs_separated(vb, vc, threshold)
                runs_agree = side != 0 and side == np.sign(change)
        else:
            basis = f"untested ({len(vb)}/{len(vc)} repeats)"
            tested = False
    big = abs(change) > threshold
    verdict = "~"
    if big and runs_agree and p is not None and p < alpha:
        better = change > 0 if m.higher_is_better else change < 0
        verdict = "improved" if better else "regressed"
    return Row(cid, label, m.name, _med(vb, m), _med(vc, m), ratio, p, basis, verdict, tested)


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


def _med(v: np.ndarray, m: Metric) -> str:
    return m.format(float(np.median(v))) if len(v) else "-"


def _ratio_text(r: float | None) -> str:
    if r is None:
        return ""
    if not math.isfinite(r):
        return "∞"
    return f"{r:.3f} ({(r - 1) * 100:+.1f} %)"


def _p_text(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2g}"  # e.g. 0.0079, 3.2e-12 (no '<': it would be HTML-escaped in cells)


# Said in the summary so that "8 ~" cannot be read as "nothing changed" when most of it
# was never tested.
SUMMARY_NOTES = {
    "~": " (no significant change)",
    UNTESTED: " (too few repeats to test; 4 seeds a side suffice)",
}


def markdown(c: Comparison) -> str:
    counts = c.counts()
    lines = [
        "## bench compare",
        "",
        f"- baseline: {_inline(c.baseline_desc)}",
        f"- candidate: {_inline(c.candidate_desc)}",
        f"- verdict needs a change > {c.threshold * 100:g} % and a two-sided Mann–Whitney U "
        f"test at p < {ALPHA} over repeats (seeds); with too few repeats, for timings, over "
        f"within-run steps, and only if ≥ {MIN_RUNS} runs a side all differ by more than the "
        "threshold",
        "",
    ]
    for w in c.warnings:
        lines += [f"> **Warning:** {_inline(w)}", ""]
    summary = ", ".join(
        f"{'**' if v == 'regressed' else ''}{counts[v]} {v}{'**' if v == 'regressed' else ''}"
        + SUMMARY_NOTES.get(v, "")
        for v in ("regressed", "improved", "~", UNTESTED, "new", "missing", "n/a")
        if counts.get(v)
    )
    lines += [f"Result: {summary or 'nothing to compare'}.", ""]
    headers = ["configuration", "metric", "baseline", "candidate", "ratio", "p", "test", "verdict"]
    align = ["l", "l", "r", "r", "r", "r", "l", "c"]
    rows = [
        [
            r.label,
            r.metric,
            r.baseline,
            r.candidate,
            _ratio_text(r.ratio),
            _p_text(r.p_value),
            r.basis,
            r.verdict,
        ]
        for r in c.rows
    ]
    lines.append(markdown_table(headers, rows, align))
    return "\n".join(lines)


def _inline(text: str) -> str:
    from bench.report.tables import md_cell

    return md_cell(text)


def append_step_summary(text: str) -> str | None:
    """Append to $GITHUB_STEP_SUMMARY when set; returns a warning line on failure."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        return f"bench: warning: cannot append to GITHUB_STEP_SUMMARY ({exc.strerror or exc})"
    return None
