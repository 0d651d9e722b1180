"""From the results contract to report-ready frames.

A *configuration* is a trial's configuration without its seed: the seeds of one
configuration are its repeats, and every summary is a median over them. Identity comes
from ``config_json`` minus ``seed`` (canonical JSON, hashed), or, for rows written
before ``config_json`` existed, from the config columns of the trials table.

Everything here tolerates older schema versions: a contract column that is absent reads
as null (``store.load_results`` adds it), numeric columns are coerced, and nothing is
assumed about which optional columns carry values.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report import labels, memory
from bench.store import Results

# Config columns of the trials table, used when a row has no config_json.
CONFIG_COLUMNS = (
    "workload",
    "mode",
    "samples",
    "micro_batch_size",
    "accumulation_steps",
    "effective_batch_size",
    "normalize",
    "partial_window",
    "drop_last",
    "optimizer",
    "lr",
    "scheduler",
    "precision",
    "data_path",
)

TRIAL_NUMERIC = (
    "samples",
    "micro_batch_size",
    "accumulation_steps",
    "effective_batch_size",
    "lr",
    "seed",
    "epochs_run",
    "optimizer_steps",
    "micro_batches",
    "samples_seen",
    "tokens_seen",
    "final_loss",
    "tail_loss",
    "best_val_loss",
    "train_time_s",
    "timed_steps",
    "samples_per_s",
    "steps_per_s",
    "tokens_per_s",
    "step_time_ms_median",
    "step_time_ms_iqr",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "nvml_peak_used_bytes",
    "nvml_process_peak_bytes",
    "cpu_peak_rss_bytes",
    "cpu_baseline_rss_bytes",
    "nvml_baseline_used_bytes",
    "nvml_baseline_process_bytes",
    "energy_j",
    "flops_per_step",
    "mfu",
    "schema_version",
)

# The steps columns report and compare read. A 10 M-row steps table is ~1 GiB in memory,
# so only these are kept and no column is copied unless it must be converted.
STEP_KEEP = ("trial_key", "step", "samples", "samples_seen", "loss", "time_s")

STATUSES = ("ok", "oom", "diverged", "failed")


@dataclass
class Prepared:
    """Trials with ``config_id``, their names (``config_label``, ``config_tag``,
    ``config_short``: see ``labels``) and ``peak_memory_bytes``; sorted steps."""

    trials: pd.DataFrame
    steps: pd.DataFrame
    configs: pd.DataFrame  # one row per configuration: id, names, config columns
    # One row per configuration (index config_id, configs' order), one column per key of
    # its configuration other than the batch shape, as text: the legend table's source.
    settings: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    # The steps that sampled the gradient noise scale: trial_key, step, samples_seen,
    # b_simple (rows with a value only; most steps have none).
    noise: pd.DataFrame = field(default_factory=pd.DataFrame)


def config_dict(row: pd.Series) -> dict[str, Any]:
    raw = row.get("config_json")
    if isinstance(raw, str) and raw.strip():
        try:
            d = json.loads(raw)
        except json.JSONDecodeError:
            d = None
        if isinstance(d, dict):
            d = dict(d)
            d.pop("seed", None)
            return d
    d = {}
    for c in CONFIG_COLUMNS:
        v = row.get(c)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            continue
        d[c] = v.item() if isinstance(v, np.generic) else v
    return d


def config_id_of(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def prepare(results: Results) -> Prepared:
    """Coerce types, derive configuration identity and labels. Raises BenchError when
    there is nothing to report."""
    trials = results.trials.copy()
    if not len(trials):
        raise BenchError("results are empty: no trial rows")
    _coerce(trials)
    dicts = [config_dict(r) for _, r in trials.iterrows()]
    trials["config_id"] = [config_id_of(d) for d in dicts]
    flat, shapes = _flat_and_shapes(trials, dicts)
    trials["config_label"] = trials["config_id"].map(labels.full_labels(shapes, flat))
    memory.add_growth(trials)
    # bench compare's "peak memory" is what the report shows: the memory the trial adds
    # (the allocator's peak on CUDA, RSS high-water minus the trial's start on CPU), not
    # the whole process, whose ~300 MiB of Python and torch hide a trial's few MiB.
    trials["peak_memory_bytes"] = trials["trial_memory_bytes"]
    configs = _configs(trials)
    settings = _name_configs(trials, configs, flat, shapes)
    steps = lean_steps(results.steps)
    noise = noise_scale_rows(results.steps)
    notes = []
    versions = sorted({int(v) for v in trials["schema_version"].dropna()})
    if versions:
        notes.append("schema_version " + ", ".join(map(str, versions)))
    return Prepared(
        trials=trials, steps=steps, configs=configs, settings=settings, notes=notes, noise=noise
    )


def _coerce(trials: pd.DataFrame) -> None:
    """Numbers as floats, names as objects with None for missing, in place; a key for
    rows without one and B = b*k where a row lacks it."""
    for c in TRIAL_NUMERIC:
        trials[c] = pd.to_numeric(trials[c], errors="coerce").astype(float)
    for c in ("workload", "mode", "precision", "status", "device", "trial_key", "optimizer"):
        trials[c] = trials[c].astype(object).where(trials[c].notna(), None)
    trials["status"] = trials["status"].fillna("unknown").astype(str)
    if trials["trial_key"].isna().any():
        # Older/hand-made rows without a key still need one to join their steps (none).
        missing = trials["trial_key"].isna()
        trials.loc[missing, "trial_key"] = [f"row{i}" for i in np.flatnonzero(missing)]
    # Effective batch size from b*k where an older row lacks it.
    eff = trials["effective_batch_size"]
    trials["effective_batch_size"] = eff.where(
        eff.notna(), trials["micro_batch_size"] * trials["accumulation_steps"]
    )


def _flat_and_shapes(
    trials: pd.DataFrame, dicts: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Per config_id: its flattened configuration and its batch-shape text."""
    flat: dict[str, dict[str, Any]] = {}
    for cid, d in zip(trials["config_id"], dicts, strict=True):
        flat.setdefault(cid, labels.flatten(d))
    first = trials.drop_duplicates("config_id").set_index("config_id")
    shapes = {
        cid: labels.shape_text(
            r["mode"], r["micro_batch_size"], r["accumulation_steps"], r["effective_batch_size"]
        )
        for cid, r in first.iterrows()
    }
    return flat, shapes


def _name_configs(
    trials: pd.DataFrame, configs: pd.DataFrame, flat: dict, shapes: dict
) -> pd.DataFrame:
    """Tags and short labels (``labels.short_labels``) on trials and configs, in place;
    returns the settings table of the configurations."""
    order = list(configs["config_id"])
    workload = dict(zip(configs["config_id"], configs["workload"], strict=True))
    tags, short = labels.short_labels(order, shapes, flat, workload)
    for frame in (trials, configs):
        frame["config_tag"] = frame["config_id"].map(tags)
        frame["config_short"] = frame["config_id"].map(short)
    return labels.settings_table(order, flat)


def _configs(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, by workload, then batch size, then label."""
    cols = ["config_id", "config_label", "workload", "mode", "micro_batch_size"]
    cols += ["accumulation_steps", "effective_batch_size", "lr", "precision", "optimizer"]
    return (
        trials.drop_duplicates("config_id")[cols]
        .sort_values(
            ["workload", "effective_batch_size", "micro_batch_size", "config_label"],
            na_position="last",
            key=_sort_key,
        )
        .reset_index(drop=True)
    )


def lean_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The columns of STEP_KEEP, numeric, each trial's rows contiguous and in step order."""
    cols = [c for c in STEP_KEEP if c in steps.columns]
    out = steps[cols]  # copy-on-write: nothing is copied until a column is replaced
    for c in cols[1:]:
        dtype = out[c].dtype
        if not (isinstance(dtype, np.dtype) and dtype.kind in "iuf"):
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    if not len(out):
        return out.reset_index(drop=True)
    if out["step"].isna().any():
        out = out[out["step"].notna()]
    codes, _ = pd.factorize(out["trial_key"], sort=False)
    step = out["step"].to_numpy()
    # Sweeps are read file by file, so rows usually arrive grouped and in step order:
    # check that (cheap) and sort only when they do not.
    same = codes[1:] == codes[:-1]
    ordered = bool(np.all(codes[1:] >= codes[:-1])) and bool(np.all(~same | (step[1:] > step[:-1])))
    if not ordered:
        out = out.iloc[np.lexsort((step, codes))]
    return out.reset_index(drop=True)


NOISE_KEEP = ("trial_key", "step", "samples_seen", "b_simple")


def noise_scale_rows(steps: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``steps`` with a ``b_simple`` value, in NOISE_KEEP's columns, numeric."""
    if "b_simple" not in steps.columns or not len(steps):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in NOISE_KEEP})
    value = pd.to_numeric(steps["b_simple"], errors="coerce")
    cols = [c for c in NOISE_KEEP if c in steps.columns]
    out = steps.loc[value.notna().to_numpy(), cols].reindex(columns=list(NOISE_KEEP))
    for c in NOISE_KEEP[1:]:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out.reset_index(drop=True)


def step_groups(steps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, trial_keys) of the contiguous per-trial blocks of a lean steps
    table. Uses factorised codes: never materialises 10 M Python strings."""
    codes, uniques = pd.factorize(steps["trial_key"], sort=False)
    n = len(codes)
    starts = (
        np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if n else np.array([], dtype=np.int64)
    )
    lengths = np.diff(np.r_[starts, n])
    keys = np.asarray(uniques, dtype=object)[codes[starts]] if n else np.array([], dtype=object)
    return starts, lengths, keys


def _sort_key(s: pd.Series) -> pd.Series:
    # Mixed None/str columns sort as strings; numbers stay numbers.
    if s.dtype == object:
        return s.fillna("").astype(str)
    return s
