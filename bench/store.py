"""The results contract: two long tables, units in column names, atomic parquet I/O.

``trials``: one row per trial. ``steps``: one row per optimizer step. Columns may be
added freely; renaming one or changing its meaning bumps SCHEMA_VERSION. A value that
does not apply (NVML on a CPU run) is null, never 0.

On disk a results folder holds either one run (``trial.parquet`` + ``steps.parquet``,
from ``bench run``) or a sweep (``trials/<trial_key>.parquet`` + ``steps/<trial_key>.parquet``,
one file per trial, so a re-run of a key replaces its rows instead of duplicating them).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.errors import BenchError

SCHEMA_VERSION = 1

# The share of a run's samples whose steps tail_loss averages over.
TAIL_FRACTION = 0.05

TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "trial_key": pa.string(),
    "sweep": pa.string(),
    "workload": pa.string(),
    "mode": pa.string(),
    "samples": pa.int64(),
    "micro_batch_size": pa.int64(),
    "accumulation_steps": pa.int64(),
    "effective_batch_size": pa.int64(),
    "normalize": pa.string(),
    "partial_window": pa.string(),
    "drop_last": pa.bool_(),
    "optimizer": pa.string(),
    "lr": pa.float64(),
    "scheduler": pa.string(),
    "precision": pa.string(),
    "data_path": pa.string(),
    "seed": pa.int64(),
    "status": pa.string(),  # ok / oom / diverged / failed
    "error": pa.string(),
    "stopped_early": pa.bool_(),
    "epochs_run": pa.int64(),
    "optimizer_steps": pa.int64(),
    "micro_batches": pa.int64(),
    "samples_seen": pa.int64(),
    "tokens_seen": pa.int64(),
    "data_sha256": pa.string(),  # the workload's data (bench.workloads.base.data_sha256)
    "final_loss": pa.float64(),  # the last optimizer step's loss
    "tail_loss": pa.float64(),  # mean loss over the last TAIL_FRACTION of samples (tail_loss())
    "best_val_loss": pa.float64(),
    "train_time_s": pa.float64(),
    "timed_steps": pa.int64(),
    "samples_per_s": pa.float64(),
    "steps_per_s": pa.float64(),
    "tokens_per_s": pa.float64(),
    "step_time_ms_median": pa.float64(),
    "step_time_ms_iqr": pa.float64(),
    "timing_noisy": pa.bool_(),
    "peak_allocated_bytes": pa.int64(),
    "peak_reserved_bytes": pa.int64(),
    "nvml_peak_used_bytes": pa.int64(),
    "nvml_process_peak_bytes": pa.int64(),
    "cpu_peak_rss_bytes": pa.int64(),
    "energy_j": pa.float64(),
    "flops_per_step": pa.float64(),
    "mfu": pa.float64(),
    "device": pa.string(),
    "env_id": pa.string(),
    # measurement detail (bench.meters): how a figure was obtained, baselines, counts
    "planned_steps": pa.int64(),
    "alloc_retries": pa.int64(),
    "cuda_ooms": pa.int64(),
    "nvml_baseline_used_bytes": pa.int64(),
    "nvml_baseline_process_bytes": pa.int64(),
    "nvml_memory_info": pa.string(),
    "nvml_samples": pa.int64(),
    "cpu_baseline_rss_bytes": pa.int64(),
    "cpu_rss_method": pa.string(),
    "energy_method": pa.string(),
    "energy_window_s": pa.float64(),
    "energy_j_per_sample": pa.float64(),
    "meter_interval_ms": pa.float64(),
    "window_wall_s": pa.float64(),
    "flops_per_unit": pa.float64(),
    "peak_flops_per_s": pa.float64(),
    "config_json": pa.string(),
    "notes": pa.string(),
    "started_at": pa.string(),  # ISO 8601, UTC
    "schema_version": pa.int64(),
}

STEP_COLUMNS: dict[str, pa.DataType] = {
    "trial_key": pa.string(),
    "epoch": pa.int64(),
    "step": pa.int64(),  # global, from 1
    "step_in_epoch": pa.int64(),
    "micro_batches": pa.int64(),
    "samples": pa.int64(),
    "samples_seen": pa.int64(),
    "tokens": pa.int64(),  # target tokens in the step (token workloads; null otherwise)
    "loss": pa.float64(),  # the window's mean loss per sample (or per target token)
    "lr": pa.float64(),
    "grad_norm": pa.float64(),
    "time_s": pa.float64(),  # training wall time at the end of this step
    "val_loss": pa.float64(),
}


def _conform(df: pd.DataFrame, columns: dict[str, pa.DataType]) -> pa.Table:
    """Contract columns first with their types (missing ones null), extra columns after."""
    fields, arrays = [], []
    n = len(df)
    for name, typ in columns.items():
        fields.append(pa.field(name, typ))
        if name in df.columns:
            arrays.append(pa.array(df[name].astype(object).where(df[name].notna(), None), typ))
        else:
            arrays.append(pa.nulls(n, typ))
    extra = pa.Table.from_pandas(
        df[[c for c in df.columns if c not in columns]], preserve_index=False
    )
    for f, col in zip(extra.schema, extra.columns, strict=True):
        fields.append(f)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def trials_table(rows: list[dict]) -> pa.Table:
    return _conform(pd.DataFrame(rows), TRIAL_COLUMNS)


def steps_table(df: pd.DataFrame) -> pa.Table:
    return _conform(df, STEP_COLUMNS)


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write parquet so that a reader (or a kill) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone who may read them
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_trial(folder: str | Path, trial: dict, steps: pd.DataFrame, *, per_key: bool) -> None:
    """Store one trial. Steps first, then the trial row: a trial row on disk means its
    steps are complete (readers may rely on it)."""
    folder = Path(folder)
    if per_key:
        key = trial["trial_key"]
        write_atomic(steps_table(steps), folder / "steps" / f"{key}.parquet")
        write_atomic(trials_table([trial]), folder / "trials" / f"{key}.parquet")
    else:
        write_atomic(steps_table(steps), folder / "steps.parquet")
        write_atomic(trials_table([trial]), folder / "trial.parquet")


def tail_loss(loss, samples, units=None, *, fraction: float = TAIL_FRACTION) -> float | None:
    """The training loss at the end of a run, less noisy than the last step's.

    ``final_loss`` is the last optimizer step's loss: at batch size 1, one sample's loss,
    and comparing configurations on it compares noise. This is the mean over the last
    steps that together hold ``fraction`` of the samples seen (whole steps, always at least
    the last one), each step weighted by what its loss is a mean over (``units``: target
    tokens for token workloads; else ``samples``). So every configuration's figure averages
    over the same share of the data: 500 steps of an SGD run over 10,000 samples, 16 of
    B = 32, the last one of full-batch GD. Arrays are in step order. None when there are
    no steps or the tail holds a non-finite loss (a diverged run).
    """
    loss = np.asarray(loss, dtype=float)
    samples = np.asarray(samples, dtype=float)
    if not len(loss) or len(samples) != len(loss):
        return None
    weight = samples if units is None else np.asarray(units, dtype=float)
    weight = np.where(np.isnan(weight), samples, weight)  # a step without tokens counted
    after = np.cumsum(samples[::-1])[::-1] - samples  # samples in the steps after each one
    tail = after < fraction * samples.sum()
    w, v = weight[tail], loss[tail]
    if not np.all(np.isfinite(v)) or not w.sum() > 0:
        return None
    return float(np.dot(w, v) / w.sum())


def _fill_tail_loss(trials: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Results written before tail_loss existed: derive it from their steps."""
    # Only the trials' columns first: on every load of new results nothing is missing, and
    # a set of a 10 M-row steps table's keys is 10 M Python strings (~5 s). A trial with no
    # finite last loss (an OOM before any step, a divergence) has no tail under any code:
    # an OOM frontier's rows must not send every load through the steps table.
    missing = trials["tail_loss"].isna() & pd.to_numeric(trials["final_loss"]).notna()
    if not missing.any():
        return trials
    wanted = set(trials.loc[missing, "trial_key"].dropna())
    cols = ["trial_key", "step", "loss", "samples", "tokens"]
    s = steps.loc[steps["trial_key"].isin(wanted), cols].sort_values(["trial_key", "step"])
    values = {
        key: tail_loss(g["loss"], g["samples"], g["tokens"])
        for key, g in s.groupby("trial_key", sort=False)
    }
    missing &= trials["trial_key"].isin(set(values))
    if not missing.any():
        return trials
    filled = pd.to_numeric(trials["tail_loss"], errors="coerce")
    filled[missing] = trials.loc[missing, "trial_key"].map(values).astype(float)
    return trials.assign(tail_loss=filled)


@dataclass(frozen=True)
class Results:
    trials: pd.DataFrame
    steps: pd.DataFrame


def _read_many(paths: list[Path], columns: dict[str, pa.DataType]) -> pd.DataFrame:
    frames = []
    for p in paths:
        try:
            frames.append(pq.read_table(p).to_pandas())
        except (OSError, pa.ArrowException) as exc:
            raise BenchError(f"corrupted parquet file {p}: {exc}") from None
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    for name in columns:  # older schema versions: missing contract columns read as null
        if name not in df.columns:
            df[name] = None
    return df


def load_results(folder: str | Path) -> Results:
    """Read a results folder (one run or a sweep) as two DataFrames, at any moment.

    Only trials whose row has been written are returned, with only their steps: a trial
    that is still running (steps written, row not yet) does not show half done.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"no results folder at {folder}")
    trial_files = sorted((folder / "trials").glob("*.parquet"))
    step_files = sorted((folder / "steps").glob("*.parquet"))
    if (folder / "trial.parquet").exists():
        trial_files.append(folder / "trial.parquet")
    if (folder / "steps.parquet").exists():
        step_files.append(folder / "steps.parquet")
    trials = _read_many(trial_files, TRIAL_COLUMNS)
    steps = _read_many(step_files, STEP_COLUMNS)
    if len(steps) and len(trials):
        steps = steps[steps["trial_key"].isin(set(trials["trial_key"]))].reset_index(drop=True)
        trials = _fill_tail_loss(trials, steps)
    elif not len(trials):
        steps = steps.iloc[0:0]
    return Results(trials=trials, steps=steps)
