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
    "energy_j",
    "flops_per_step",
    "mfu",
    "schema_version",
)

# The steps columns report and compare read. A 10 M-row steps table is ~1 GiB in memory,
# so only these are kept and no column is copied unless it must be converted.
STEP_KEEP = ("trial_key", "step", "samples", "samples_seen", "loss", "time_s")

# The one "peak memory" a summary shows, first non-null wins. The caching allocator's
# reserved peak is what decides a CUDA OOM; NVML's per-process figure adds the CUDA
# context; on a CPU run only the process RSS exists. The source is reported alongside.
PEAK_MEMORY_SOURCES = (
    "peak_reserved_bytes",
    "nvml_process_peak_bytes",
    "nvml_peak_used_bytes",
    "peak_allocated_bytes",
    "cpu_peak_rss_bytes",
)

STATUSES = ("ok", "oom", "diverged", "failed")

# Keys that never distinguish configurations in a label (shown elsewhere or identity).
_LABEL_SKIP = {
    "seed",
    "mode",
    "batch_size",
    "accumulation_steps",
    "micro_batch_size",
    "effective_batch_size",
}


@dataclass
class Prepared:
    """Trials with ``config_id``/``config_label``/``peak_memory_bytes``; sorted steps."""

    trials: pd.DataFrame
    steps: pd.DataFrame
    configs: pd.DataFrame  # one row per configuration: id, label, config columns
    notes: list[str] = field(default_factory=list)


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


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={_fmt_value(x)}" for k, x in sorted(v.items()))
    return str(v)


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """workload_options (a nested table) flattened so each option can vary on its own."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


def _int_or_none(v: Any) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def _shape_text(mode: Any, b: Any, k: Any, big_b: Any) -> str:
    b, k, big_b = _int_or_none(b), _int_or_none(k), _int_or_none(big_b)
    if big_b is None and b is not None and k is not None:
        big_b = b * k
    parts = [str(mode) if isinstance(mode, str) and mode else "?"]
    if big_b is not None:
        parts.append(f"B={big_b}" + (f" ({b}×{k})" if b is not None and k is not None else ""))
    return " ".join(parts)


def prepare(results: Results) -> Prepared:
    """Coerce types, derive configuration identity and labels. Raises BenchError when
    there is nothing to report."""
    trials = results.trials.copy()
    if not len(trials):
        raise BenchError("results are empty: no trial rows")
    _coerce(trials)
    dicts = [config_dict(r) for _, r in trials.iterrows()]
    trials["config_id"] = [config_id_of(d) for d in dicts]
    trials["config_label"] = trials["config_id"].map(_labels(trials, dicts))
    trials["peak_memory_bytes"], trials["peak_memory_source"] = _peak_memory(trials)
    steps = lean_steps(results.steps)
    notes = []
    versions = sorted({int(v) for v in trials["schema_version"].dropna()})
    if versions:
        notes.append("schema_version " + ", ".join(map(str, versions)))
    return Prepared(trials=trials, steps=steps, configs=_configs(trials), notes=notes)


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


def _labels(trials: pd.DataFrame, dicts: list[dict[str, Any]]) -> dict[str, str]:
    """Per config_id: the batch shape and the keys whose values vary across
    configurations; the id appended where two configurations would print alike."""
    flat_by_id: dict[str, dict[str, Any]] = {}
    for cid, d in zip(trials["config_id"], dicts, strict=True):
        flat_by_id.setdefault(cid, _flatten(d))
    all_keys = sorted({k for f in flat_by_id.values() for k in f})
    varying = [
        k
        for k in all_keys
        if k not in _LABEL_SKIP
        and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat_by_id.values()})
        > 1
    ]
    first = trials.drop_duplicates("config_id").set_index("config_id")
    labels = {}
    for cid, f in flat_by_id.items():
        r = first.loc[cid]
        text = _shape_text(
            r["mode"], r["micro_batch_size"], r["accumulation_steps"], r["effective_batch_size"]
        )
        extra = [f"{k}={_fmt_value(f[k])}" for k in varying if k in f]
        labels[cid] = " ".join([text, *extra])
    # Labels must identify: if two configurations print alike, add the id.
    seen: dict[str, int] = {}
    for lab in labels.values():
        seen[lab] = seen.get(lab, 0) + 1
    return {cid: (lab if seen[lab] == 1 else f"{lab} [{cid[:6]}]") for cid, lab in labels.items()}


def _peak_memory(trials: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per trial the first present of PEAK_MEMORY_SOURCES, and which one it was."""
    mem = pd.Series(np.nan, index=trials.index)
    src = pd.Series(None, index=trials.index, dtype=object)
    for c in PEAK_MEMORY_SOURCES:
        take = mem.isna() & trials[c].notna()
        mem[take] = trials.loc[take, c]
        src[take] = c
    return mem, src


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
