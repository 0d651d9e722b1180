"""Results on disk: atomic parquet I/O for the tables :mod:`bench.records` declares.

``trials``: one row per trial. ``steps``: one row per optimizer step. Every file of a
kind has its record's schema exactly (``bench.records``: columns, types, order), so
pandas, polars and DuckDB read a folder as one table. Files of older schema versions
load as the current schema (:func:`read_table`).

On disk a results folder holds either one run (``trial.parquet`` + ``steps.parquet``,
from ``bench run``) or a sweep (``trials/<trial_key>.parquet`` + ``steps/<trial_key>.parquet``,
one file per trial, so a re-run of a key replaces its rows instead of duplicating them).
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench import records
from bench.errors import BenchError
from bench.failures import DiskFull, is_disk_full

SCHEMA_VERSION = records.SCHEMA_VERSION

# The share of a run's samples whose steps tail_loss averages over.
TAIL_FRACTION = 0.05

# Atomic writes go through ``.<name>.<random>.tmp`` next to the file.
TMP_SUFFIX = ".tmp"
# A temporary file older than this has no live writer, even where another coordinator
# works on the folder: a parquet or JSON write takes well under a second.
ORPHAN_AGE_S = 600.0

# Name -> arrow type of each table's columns, derived from bench.records.
TRIAL_COLUMNS: dict[str, pa.DataType] = records.columns(records.TrialRecord)
STEP_COLUMNS: dict[str, pa.DataType] = records.columns(records.StepRecord)


def trials_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) as a trials table; an undeclared key raises records.RecordError."""
    return records.trials_table(rows)


def steps_table(df: pd.DataFrame) -> pa.Table:
    return records.steps_table(df)


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write parquet so that a reader (or a kill) never sees a half-written file; a full
    disk is :class:`~bench.failures.DiskFull`, with no temporary file left."""

    def write(tmp: str) -> None:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())

    _replace_atomically(path, write)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _replace_atomically(path, write)


def _replace_atomically(path: str | Path, write) -> None:
    """``write(tmp)`` into ``.<name>.<random>.tmp`` next to ``path``, then rename it over
    ``path``. Whatever stops it (an error, ENOSPC, an interrupt) removes the temporary
    file; a kill cannot, and :func:`remove_orphaned_temp_files` finds what it leaves."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone who may read them
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise DiskFull.at(path.parent, exc) from None
        raise


def remove_orphaned_temp_files(
    folder: str | Path, subfolders: tuple[str, ...], *, older_than_s: float | None
) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files a killed writer left in ``folder``'s
    ``subfolders``: all of them (``older_than_s`` None: the caller knows that no writer
    is alive), or those not modified for ``older_than_s`` seconds. Returns what went."""
    removed = []
    now = time.time()
    for sub in subfolders:
        for tmp in Path(folder, sub).glob(f".*{TMP_SUFFIX}"):
            try:
                if older_than_s is None or now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:  # its writer finished (or another start removed it)
                continue
    return removed


def write_trial(folder: str | Path, trial: dict, steps: pd.DataFrame, *, per_key: bool) -> None:
    """Store one trial. Both tables are built (and checked against the contract) before
    anything is written; then steps first, then the trial row: a trial row on disk means
    its steps are complete (readers may rely on it)."""
    folder = Path(folder)
    steps_part, trial_part = steps_table(steps), trials_table([trial])
    if per_key:
        key = trial["trial_key"]
        write_atomic(steps_part, folder / "steps" / f"{key}.parquet")
        write_atomic(trial_part, folder / "trials" / f"{key}.parquet")
    else:
        write_atomic(steps_part, folder / "steps.parquet")
        write_atomic(trial_part, folder / "trial.parquet")


def write_trials(folder: str | Path, trials: list[tuple[dict, pd.DataFrame]]) -> None:
    """Store several trials of a sweep (one file per key, as ``write_trial(per_key=True)``)
    at the cost of a few fsyncs instead of two per trial: a stack's 64 members write 128
    files in ~0.5 s instead of ~1.4 s (docs/benchmarks.md, "Stacked sweeps").

    Every table is built and checked first (the trials rows as one table, then sliced).
    Then each file is written to its temporary name and fsynced, concurrently (pyarrow
    and fsync release the GIL, and concurrent fsyncs share the filesystem's journal
    commits); then, only when all are, renamed into place in order (each trial's steps
    before its row); then each directory is fsynced. So after a kill -9 at any point a
    file under its own name is whole, and a trial's row means its steps are complete;
    after a power loss a renamed file's data is on disk, and once this returns so are
    the renames (on a journaling filesystem, ext4 or XFS, renames reach the disk in
    order). A failure before the renames (a full disk: DiskFull) writes none of them."""
    folder = Path(folder)
    if not trials:
        return
    rows = trials_table([row for row, _ in trials])
    files: list[tuple[pa.Table, Path]] = []
    for i, (row, steps) in enumerate(trials):
        key = row["trial_key"]
        files.append((steps_table(steps), folder / "steps" / f"{key}.parquet"))
        files.append((rows.slice(i, 1), folder / "trials" / f"{key}.parquet"))
    for sub in ("steps", "trials"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    tmps: list[str] = []
    try:
        tmps = [_temp_path(path) for _, path in files]
        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            list(pool.map(_write_synced, [t for t, _ in files], tmps))
        for tmp, (_, path) in zip(tmps, files, strict=True):
            os.replace(tmp, path)
        tmps = []
        for sub in ("steps", "trials"):
            _fsync_path(folder / sub)
    except BaseException as exc:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise DiskFull.at(folder, exc) from None
        raise


def _temp_path(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # as _replace_atomically: results are for everyone who may read them
    return tmp


def _write_synced(table: pa.Table, tmp: str) -> None:
    pq.write_table(table, tmp)
    _fsync_path(tmp)


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _read_raw(path: str | Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise BenchError(f"corrupted parquet file {path}: {exc}") from None


def _upgrade(raw: pa.Table, path: str | Path, record: records.Record, keep_extra: bool):
    try:
        return records.upgrade(raw, record, keep_extra=keep_extra)
    except records.RecordError as exc:
        raise BenchError(f"parquet file {path} does not fit the results contract: {exc}") from None


def read_table(path: str | Path, record: records.Record, *, keep_extra: bool = False) -> pa.Table:
    """One parquet file of ``record``'s table, written by any schema version, as the
    current schema (bench.records.upgrade). An unreadable file is a BenchError."""
    return _upgrade(_read_raw(path), path, record, keep_extra)


def _read_many(paths: list[Path], record: records.Record) -> pd.DataFrame:
    # Columns an older folder wrote outside the contract are kept (after the declared
    # ones): loading shows what is on disk; only writing is strict.
    tables = []
    for p in paths:
        raw = _read_raw(p)
        if raw.num_columns:  # a file without columns holds no rows
            tables.append(_upgrade(raw, p, record, keep_extra=True))
    if not tables:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in records.columns(record)})
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


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
    trials = _read_many(trial_files, records.TrialRecord)
    steps = _read_many(step_files, records.StepRecord)
    if len(steps) and len(trials):
        steps = steps[steps["trial_key"].isin(set(trials["trial_key"]))].reset_index(drop=True)
        trials = _fill_tail_loss(trials, steps)
    elif not len(trials):
        steps = steps.iloc[0:0]
    return Results(trials=trials, steps=steps)
