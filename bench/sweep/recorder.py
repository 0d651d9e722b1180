"""Records each ended trial: its parquet rows first (atomic, one file per key, so a
re-run replaces, never duplicates), then its row and status on the Optuna trial, then
``tell``. Dying in between only makes the ticket lost (see :mod:`bench.sweep.tickets`).
Nothing is written for a claim whose lease was taken over (``Coordination.holds``).

Writing is queued: a finished trial is written after its worker has the next trial, so
the writing (parquet, study) overlaps training instead of adding to it. What is queued
is written in one go (:meth:`Recorder.flush`): all the trials' parquet files together,
each whole before any is renamed into place (:func:`bench.store.write_trials`), then the
study's records of all of them (user attributes, ``tell``) in one append to the
embedded journal at the end (:meth:`bench.sweep.trial_writer.TrialWriter.batched`), so a
stack's 64 members cost one journal fsync, not ~640. A kill before that append leaves
the whole batch's trials RUNNING with their parquet on disk: lost tickets, run again by
the next start, their per-key files replaced, so each key still has one row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.console import Progress
from bench.errors import BenchError
from bench.failures import DiskFull, is_disk_full_message
from bench.records import extra_json
from bench.sweep.pool import Ended
from bench.sweep.tickets import Job, Tickets

# Shown one per column by optuna-dashboard, which cuts a user attribute at 1,024
# characters: the full row (``bench_row``, ~2,400) loses every column past that there.
# ~2 ms per attribute on the embedded journal, so a few, not all.
DASHBOARD_COLUMNS = (
    "tail_loss",
    "samples_per_s",
    "step_time_ms_median",
    "peak_allocated_bytes",
    "cpu_peak_rss_bytes",
    "energy_j",
)


def json_safe(value: Any) -> Any:
    """A value Optuna's storage can hold as JSON: NaN and infinities become None,
    numpy scalars plain numbers."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        f = float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)
    if f.is_integer() and "int" in type(value).__name__:
        return int(f)
    return f if math.isfinite(f) else None


class Recorder:
    def __init__(
        self,
        spec: Any,
        folder: Path,
        tickets: Tickets,
        progress: Progress,
        *,
        show: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.tickets = tickets
        self.progress = progress
        self.show = show  # redraw the progress counts after a trial is written
        self.pending: list[tuple[Job, dict, Any, float]] = []
        self.ran_here = 0  # trials this coordinator recorded
        self.busy_here_s = 0.0  # dispatch-to-end time of those trials, summed
        self.train_here_s = 0.0  # their train_time_s, summed

    def add(self, end: Ended) -> None:
        """Queue an ended trial. One that sent no row gets one now, with the peak RSS
        its worker reached as polled while it ran. A trial that failed because the disk
        is full has no result: the sweep stops (DiskFull) and the trial runs again."""
        job = end.job
        error = end.error if end.trial is None else end.trial.get("error")
        if end.status == "failed" and error and is_disk_full_message(error):
            raise DiskFull.at(self.folder, f"trial {job.trial.number}: {error}")
        if end.trial is None:
            from bench.procs import unreported_trial_result

            result = unreported_trial_result(
                job.config, status=end.status, error=end.error or "", sweep=self.spec.name
            )
            result.trial["cpu_peak_rss_bytes"] = job.peak_rss
            self.pending.append((job, result.trial, result.steps, end.busy_s))
        else:
            self.pending.append((job, end.trial, end.steps, end.busy_s))

    def flush(self) -> None:
        """Write every queued trial: all their parquet files together
        (:func:`bench.store.write_trials`), then the study's records of all of them in
        one batch; the study's counts are read once, at the end."""
        if not self.pending:
            return
        from bench.store import write_trials

        batch = [(job, self._row(job, row), steps, busy) for job, row, steps, busy in self.pending]
        self.pending.clear()
        batch = [item for item in batch if self._holds(item[0])]
        write_trials(self.folder, [(row, steps) for _, row, steps, _ in batch])  # first
        with self.tickets.writer.batched():
            for job, row, _steps, busy in batch:
                self._tell(job, row)
                self._count(job, row, busy)
        self.show()

    def _row(self, job: Job, row: dict) -> dict:
        row = dict(row)
        row["sweep"] = self.spec.name
        row["attempt"] = job.attempt
        row["optuna_trial"] = job.trial.number
        # Which spec the row belongs to: folders from several hosts are merged only when equal.
        row["extra"] = extra_json(
            {**json.loads(row.get("extra") or "{}"), "spec_hash": self.spec.spec_hash}
        )
        if row.get("cpu_peak_rss_bytes") is None and job.peak_rss:
            row["cpu_peak_rss_bytes"] = job.peak_rss
        if row.get("trial_key") != job.key:
            raise BenchError(
                f"worker returned key {row.get('trial_key')} for {job.key}: config round trip broke"
            )
        return row

    def _holds(self, job: Job) -> bool:
        if self.tickets.coordination.holds(job.lease):
            return True
        # Fenced: this coordinator's claim was taken over while it ran, and another
        # one runs the key; writing too would make a second row.
        self.progress.log(
            f"{self.spec.name}: not recording {job.key} (Optuna trial {job.trial.number}): "
            "its claim was taken over while the connection to the study was down"
        )
        return False

    def _count(self, job: Job, row: dict, busy: float) -> None:
        self.ran_here += 1
        self.busy_here_s += busy
        self.train_here_s += float(row.get("train_time_s") or 0.0)
        p = self.progress  # counted here until flush reads the study's counts
        failed = row.get("status") not in ("ok", "duplicate")
        p.update(done=p.done + 1, running=max(0, p.running - 1), failed=p.failed + failed)
        p.trial_line(_trial_line(self.spec, job, row, busy))

    def _tell(self, job: Job, row: dict) -> None:
        from optuna.trial import TrialState

        status = row.get("status", "failed")
        writer = self.tickets.writer
        writer.set_user_attr(job.trial, "bench_row", {k: json_safe(v) for k, v in row.items()})
        writer.set_user_attr(job.trial, "bench_status", status)
        writer.set_user_attr(job.trial, "bench_label", _point_label(self.spec, job))
        writer.set_user_attr(job.trial, "bench_folder", str(self.folder.resolve()))  # rows' home
        for column in DASHBOARD_COLUMNS:
            if row.get(column) is not None:
                writer.set_user_attr(job.trial, column, json_safe(row[column]))
        self.tickets.set_constraints(job.trial, row)
        values = [row.get(o.column) for o in self.spec.objectives]
        ok = status == "ok" and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        study = self.tickets.study
        try:
            if ok:
                study.tell(job.trial, [float(v) for v in values])
            else:
                study.tell(job.trial, state=TrialState.FAIL)
        except Exception as exc:  # noqa: BLE001 - the rows are safe; say why the study is not
            self.progress.log(
                f"{self.spec.name}: could not finish Optuna trial {job.trial.number}: {exc}"
            )


def _trial_line(spec: Any, job: Job, row: dict, busy: float) -> str:
    status = row.get("status", "failed")
    params = _point_label(spec, job)
    loss = row.get("final_loss")
    loss_text = f" final_loss={loss:.4g}" if isinstance(loss, float) and math.isfinite(loss) else ""
    err = f" ({row.get('error')})" if row.get("error") and status != "ok" else ""
    return f"{status:<8} {job.key} {params}{loss_text} [{busy:.1f} s]{err}"


def _point_label(spec: Any, job: Job) -> str:
    """What the trial is, in words: the grid point's label, or the sampled values."""
    point = spec.points_by_key.get(job.key)
    return point.label if point is not None else _config_label(job.config)


def _config_label(config: Any) -> str:
    """Search trials: the sampled values that differ from the defaults, briefly."""
    c = config
    return f"{c.workload} {c.mode} b={c.batch_size} k={c.accumulation_steps} lr={c.lr:g} {c.precision} seed={c.seed}"
