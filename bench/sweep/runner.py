"""The sweep coordinator: tickets, claims, warm workers, recording, resume.

How "every key exactly once" holds, with any number of coordinators on one or many
hosts (each ``python -m bench sweep SPEC`` is one coordinator with N workers):

1. **Tickets.** Each grid key (or each of a search's ``n_trials`` slots) is an Optuna
   trial enqueued as WAITING (``study.enqueue_trial``, user attrs ``bench_key`` /
   ``bench_slot`` and ``bench_attempt``). Tickets are created only by ``reconcile``,
   which runs under the sweep mutex (:mod:`bench.sweep.storage`) and reads the study
   first: a key gets a ticket only when it has neither a live ticket nor a result. So
   no key ever has two live tickets, however many coordinators start at once (Optuna's
   own ``GridSampler`` documents duplicates with parallel workers; ``enqueue_trial``'s
   ``skip_if_exists`` is a read-then-write race; both are avoided here).
2. **Claims.** A coordinator pops a ticket with ``study.ask()`` (WAITING -> RUNNING is
   atomic in both storages: a row lock in RDB, log order in the journal) and records
   itself as owner, both inside the mutex, so a RUNNING ticket always has an owner
   unless its coordinator died mid-claim.
3. **Lost trials.** A RUNNING ticket whose owner is dead (its liveness lock is free,
   which the kernel / the database guarantee at the moment of death) is marked FAIL
   with ``bench_status = "lost"`` and its key gets a new ticket: keys that were running
   when a sweep was killed run again on resume. A lost ticket is not a result.
4. **Results.** The owner writes the parquet rows first (atomic, one file per key, so
   a re-run replaces, never duplicates), then ``bench_row`` / ``bench_status`` and
   ``tell``. Dying in between only makes the ticket lost: the key re-runs and its file
   is replaced.

Isolation: trials run in warm worker processes (:mod:`bench.sweep.worker`). A worker
that dies mid-trial (SIGKILL from the OOM killer, a segfault) is recorded with
:func:`bench.failures.status_for_exit` and the peak RSS polled while it ran; after any
``oom`` or ``failed`` trial the worker is replaced, so the next trial starts clean, and
so is a worker whose reply says it must retire (its CPU memory cap could not be put back).

Exit code (:attr:`Summary.exit_code`): 0 when every trial has a result and none failed;
1 when some trial failed, or when every trial ended ``invalid`` (search mode: each
sampled point was refused, so nothing trained; the run says so on its last line).
With ``--retry-failed`` a failure recorded before this run is not a result in search
mode either: a slot that samples that configuration runs it again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any, TextIO

from bench.errors import BenchError, ConfigError
from bench.sweep.progress import Progress, format_duration
from bench.sweep.spec import SweepSpec, _display, describe_point
from bench.sweep.storage import StorageHandle, open_storage

RESULT_STATUSES = ("ok", "oom", "diverged", "failed")
CONSUMED = RESULT_STATUSES + ("invalid", "duplicate")  # search slots that are used up
RESTART_AFTER = ("oom", "failed")
CLAIM_POLL_S = 1.0  # idle coordinator: look for new tickets this often
RECONCILE_EVERY_S = 5.0  # idle coordinator: look for lost trials of dead owners this often
STARTUP_TIMEOUT_S = 300.0


@dataclass
class Job:
    trial: Any  # optuna.trial.Trial
    config: Any  # TrialConfig
    key: str
    attempt: int
    started: float = 0.0
    deadline: float | None = None
    peak_rss: int | None = None


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    process: Any = None
    conn: Any = None
    pid: int | None = None
    ready: bool = False
    job: Job | None = None
    started: float = 0.0


@dataclass
class Counts:
    total: int
    done: int = 0
    failed: int = 0  # done, status not ok
    running: int = 0
    waiting: int = 0
    statuses: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return self.done >= self.total


@dataclass
class Summary:
    sweep: str
    folder: Path
    storage: str
    total: int
    counts: Counts
    wall_s: float
    startup_s: float  # until the first worker was ready
    ran_here: int  # trials this coordinator ran
    train_time_here_s: float  # their train_time_s, summed
    worker_busy_s: float  # dispatch-to-reply time of those trials, summed
    skipped: int

    @property
    def all_invalid(self) -> bool:
        """Every trial ended 'invalid' (search mode: each sampled point was refused), so
        nothing ran: a sweep that answers nothing, not a success."""
        s = self.counts.statuses
        return bool(s) and s.get("invalid", 0) == sum(s.values())

    @property
    def exit_code(self) -> int:
        if not self.counts.complete or self.counts.statuses.get("failed") or self.all_invalid:
            return 1
        return 0


def _json_safe(value: Any) -> Any:
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


def check_flags(workers: int, threads: int | None) -> None:
    """--workers / --threads: the one check, for the command and for run_sweep."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError(f"--threads must be >= 1, got {threads}")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _proc_hwm(pid: int) -> int | None:
    from bench.procs import proc_status_bytes

    return proc_status_bytes("VmHWM", pid)


def _pinned_envs(n: int) -> list[dict[str, str]]:
    """CUDA_VISIBLE_DEVICES for n workers, one GPU each: the parent's own i-th visible
    entry when it has CUDA_VISIBLE_DEVICES ("2,3", MIG UUIDs), else the ordinal i."""
    from bench.meters.nvml import visible_device_entry

    envs = []
    for i in range(n):
        entry = visible_device_entry(i)
        envs.append({"CUDA_VISIBLE_DEVICES": entry if entry is not None else str(i)})
    return envs


class SweepRunner:
    def __init__(
        self,
        spec: SweepSpec,
        *,
        workers: int = 1,
        storage: str | None = None,
        results: str | Path = "results",
        retry_failed: bool = False,
        threads: int | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        check_flags(workers, threads)
        self.threads = threads
        self.spec = spec
        self.requested_workers = workers
        self.storage_url = storage
        self.folder = Path(results) / spec.name
        self.retry_failed = retry_failed
        self.stream = stream or sys.stderr
        self.progress = Progress(spec.name, spec.total, stream=self.stream, tty=tty)
        self.handle: StorageHandle | None = None
        self.study: Any = None
        self.workers: list[Worker] = []
        self._before_start = -1  # the highest Optuna trial number when this run began
        self._backlog: list[Job] = []  # claimed jobs whose dispatch failed: run them first
        self._ran_here = 0
        self._train_here = 0.0
        self._busy_here = 0.0
        self._first_ready: float | None = None
        self._n_train_cache: dict = {}
        self._pending: list[tuple] = []
        self._last_status = ""
        self._created_study = False  # this run made the study (see _discard_if_unused)

    # -- public ----------------------------------------------------------------------

    def run(self) -> Summary:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t0 = time.monotonic()
        spec = self.spec
        self.handle = open_storage(self.storage_url, self.folder, spec.name)
        coord = self.handle.coordination
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            coord.close()
            raise ConfigError(
                f"--results: cannot create the sweep folder {self.folder}: {exc.strerror or exc}"
            ) from None
        discard = False
        try:
            with coord.mutex():
                self.study = self._open_study()
                counts = self._reconcile(startup=True)
            self._announce(counts)
            if not counts.complete:
                self._start_workers(remaining=counts.total - counts.done)
                counts = self._loop()
        except KeyboardInterrupt:
            self.progress.log(f"{spec.name}: interrupted; re-run the same command to resume")
            raise
        except BenchError:
            discard = True  # e.g. no worker could start: see _discard_if_unused
            raise
        finally:
            try:
                self._flush()  # finished trials are results, whatever stopped the loop
            finally:
                self._stop_workers()
                if discard:
                    with contextlib.suppress(Exception):
                        self._discard_if_unused()
                coord.close()
            self.progress.close()
        wall = time.monotonic() - t0
        summary = Summary(
            sweep=spec.name,
            folder=self.folder,
            storage=self.handle.description,
            total=spec.total,
            counts=counts,
            wall_s=wall,
            startup_s=(self._first_ready - t0) if self._first_ready else 0.0,
            ran_here=self._ran_here,
            train_time_here_s=self._train_here,
            worker_busy_s=self._busy_here,
            skipped=len(spec.skipped),
        )
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(counts.statuses.items())) or "none"
        self.progress.log(
            f"{spec.name}: {counts.done}/{counts.total} trials done ({statuses}) in {format_duration(wall)}; "
            f"ran {self._ran_here} here -> {self.folder} (study {spec.name!r} in {self.handle.description})"
        )
        if summary.all_invalid:
            self.progress.log(
                f"{spec.name}: every trial was an invalid configuration, nothing was trained "
                "(see the messages above); exit code 1"
            )
        return summary

    # -- study -----------------------------------------------------------------------

    def _sampler(self) -> Any:
        import optuna

        s = self.spec.search
        if s is None:
            return optuna.samplers.RandomSampler(seed=0)  # every trial's params are fixed
        # Constraints reach the samplers through trial.set_constraint (optuna 5.0
        # deprecates constraints_func); see _set_constraints.
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=s.seed)
        return optuna.samplers.NSGAIISampler(seed=s.seed)

    def _set_constraints(self, trial: Any, row: dict) -> None:
        for c in self.spec.constraints:
            trial.set_constraint(c.text, c.violation(row.get(c.column)))

    def _open_study(self) -> Any:
        import optuna

        spec = self.spec
        try:
            study = optuna.load_study(
                study_name=spec.name, storage=self.handle.storage, sampler=self._sampler()
            )
        except KeyError:
            self._created_study = True
            study = optuna.create_study(
                study_name=spec.name,
                storage=self.handle.storage,
                sampler=self._sampler(),
                directions=spec.directions,
            )
        attrs = study.user_attrs
        found = attrs.get("bench_spec_hash")
        if found is None:
            foreign = [t for t in study.get_trials(deepcopy=False) if self._ident(t) is None]
            if foreign:
                raise BenchError(
                    f"study {spec.name!r} in {self.handle.description} exists and was not made by "
                    "bench sweep; choose another sweep name"
                )
            study.set_user_attr("bench_spec_hash", spec.spec_hash)
            study.set_user_attr("bench_question", spec.question)
            study.set_user_attr("bench_spec_file", str(spec.path))
            study.set_user_attr("bench_total", spec.total)
            study.set_user_attr(
                "bench_objectives", [[o.column, o.direction] for o in spec.objectives]
            )
        elif found != spec.spec_hash:
            raise BenchError(
                f"sweep {spec.name!r} in {self.handle.description} was started from a different spec "
                f"(spec hash {found} there, {spec.spec_hash} now; first from {attrs.get('bench_spec_file')}); "
                f"refusing to mix them: give the changed spec a new name, or delete {self.folder} to start over"
            )
        if [d.name.lower() for d in study.directions] != spec.directions:
            raise BenchError(
                f"study {spec.name!r} has directions {study.directions}, the spec wants {spec.directions}"
            )
        return study

    def _discard_if_unused(self) -> bool:
        """Delete the study this run created when the run failed before anything ran (a
        worker could not start: a memory cap below its baseline, say). Kept, its spec
        hash would refuse the corrected spec under the same name. Only where no other
        coordinator is alive on it (known for the file-locked journal; with PostgreSQL
        there is no list of coordinators, so the study stays). The folder stays: its
        worker logs say why the start failed, and its lock file is the sweep's mutex,
        which a coordinator starting now may already hold."""
        import optuna
        from optuna.trial import TrialState

        coord = self.handle.coordination
        if not self._created_study or self._ran_here or self.study is None:
            return False
        with coord.mutex():
            if coord.others_alive():
                return False
            trials = self.study.get_trials(deepcopy=False)
            if any(t.state != TrialState.WAITING for t in trials):
                return False
            if any((self.folder / "trials").glob("*.parquet")):
                return False
            optuna.delete_study(study_name=self.spec.name, storage=self.handle.storage)
        self.progress.log(
            f"{self.spec.name}: nothing ran; its study was dropped, so a corrected spec "
            "can start under the same name"
        )
        return True

    def _ident(self, trial: Any) -> Any:
        attrs = trial.user_attrs
        return attrs.get("bench_slot") if self.spec.search else attrs.get("bench_key")

    # -- tickets ---------------------------------------------------------------------

    def _groups(self) -> dict[Any, list[Any]]:
        groups: dict[Any, list[Any]] = defaultdict(list)
        for t in self.study.get_trials(deepcopy=False):
            ident = self._ident(t)
            if ident is not None:
                groups[ident].append(t)
        return groups

    def _expected(self) -> list[Any]:
        if self.spec.search:
            return list(range(self.spec.search.n_trials))
        return [p.key for p in self.spec.points]

    def _reconcile(self, *, startup: bool) -> Counts:
        """Under the mutex: fail lost trials, give a ticket to every key that needs one."""
        from optuna.trial import TrialState

        coord = self.handle.coordination
        if startup:
            numbers = [t.number for t in self.study.get_trials(deepcopy=False)]
            self._before_start = max(numbers, default=-1)
        lost = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self._ident(t) is None:
                continue
            owner = t.system_attrs.get("bench_owner")
            if owner is None or not coord.is_alive(owner):
                self._mark_lost(t, owner)
                lost += 1
        if lost:
            self.progress.log(
                f"{self.spec.name}: {lost} trial(s) whose coordinator died will run again"
            )
        groups = self._groups()
        for ident in self._expected():
            group = groups.get(ident, [])
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in group):
                continue
            finished = [t for t in group if t.user_attrs.get("bench_status") in CONSUMED]
            latest = max(finished, key=lambda t: t.number) if finished else None
            retry = startup and self.retry_failed and latest is not None and _failed(latest)
            if latest is not None and not retry:
                continue
            attempt = 1 + max((t.user_attrs.get("bench_attempt", 0) for t in group), default=0)
            if self.spec.search:
                # A lost or retried slot keeps the configuration it had sampled.
                previous = max(group, key=lambda t: t.number) if group else None
                params = dict(previous.params) if previous is not None else {}
                self.study.enqueue_trial(
                    params, user_attrs={"bench_slot": ident, "bench_attempt": attempt}
                )
            else:
                point = self.spec.points_by_key[ident]
                self.study.enqueue_trial(
                    dict(point.params), user_attrs={"bench_key": ident, "bench_attempt": attempt}
                )
        return self._counts()

    def _mark_lost(self, t: Any, owner: str | None) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = self.handle.storage
        try:
            storage.set_trial_user_attr(t._trial_id, "bench_status", "lost")
            storage.set_trial_user_attr(
                t._trial_id,
                "bench_error",
                f"coordinator {owner or '(unknown)'} died while this trial ran",
            )
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # it finished after all

    def _counts(self) -> Counts:
        from optuna.trial import TrialState

        counts = Counts(total=self.spec.total)
        groups = self._groups()
        for ident in self._expected():
            group = groups.get(ident, [])
            live = [t for t in group if t.state in (TrialState.WAITING, TrialState.RUNNING)]
            counts.running += sum(t.state == TrialState.RUNNING for t in live)
            counts.waiting += sum(t.state == TrialState.WAITING for t in live)
            if live:
                continue
            finished = [t for t in group if t.user_attrs.get("bench_status") in CONSUMED]
            if finished:
                status = max(finished, key=lambda t: t.number).user_attrs["bench_status"]
                counts.done += 1
                counts.statuses[status] += 1
                counts.failed += status not in ("ok", "duplicate")
        return counts

    # -- claims ----------------------------------------------------------------------

    def _claim(self, n: int) -> list[Job]:
        """Under the mutex: pop up to n tickets and own them."""
        from optuna.trial import TrialState

        waiting = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if self._ident(t) is not None
        ]
        jobs: list[Job] = []
        storage = self.handle.storage
        for _ in range(min(n, len(waiting))):
            trial = self.study.ask()
            storage.set_trial_system_attr(
                trial._trial_id, "bench_owner", self.handle.coordination.owner
            )
            attrs = trial.user_attrs
            if self._ident_of_attrs(attrs) is None:
                # Not a ticket (someone else's ask() on this study): give it back as failed.
                storage.set_trial_user_attr(trial._trial_id, "bench_status", "stray")
                self.study.tell(trial, state=TrialState.FAIL)
                break
            attempt = int(attrs.get("bench_attempt", 1))
            if self.spec.search:
                job = self._sample(trial, attempt)
            else:
                point = self.spec.points_by_key[attrs["bench_key"]]
                self._suggest_fixed(trial, point.params)
                job = Job(trial, point.config, point.key, attempt)
            if job is not None:
                jobs.append(job)
        return jobs

    def _ident_of_attrs(self, attrs: dict) -> Any:
        return attrs.get("bench_slot") if self.spec.search else attrs.get("bench_key")

    def _choices(self) -> dict[str, list[Any]]:
        spec = self.spec
        choices: dict[str, list[Any]] = {}
        if len(spec.cases) > 1:
            choices["case"] = list(range(len(spec.cases)))
        for axis, values in spec.axes.items():
            choices[axis] = [_display(v) for v in values]
        if len(spec.seeds) > 1:
            choices["seed"] = list(spec.seeds)
        return choices

    def _suggest_fixed(self, trial: Any, params: dict) -> None:
        # The full choice list, not [value]: RDB storage refuses a categorical parameter
        # whose choices differ between trials of one study.
        choices = self._choices()
        for name in params:
            trial.suggest_categorical(name, choices[name])

    def _sample(self, trial: Any, attempt: int) -> Job | None:
        """Search mode: let the sampler choose, then make sure the key runs only once."""
        from optuna.trial import TrialState

        from bench.sweep.spec import validate_point

        spec = self.spec
        storage = self.handle.storage
        choices = self._choices()
        values: dict[str, Any] = {}
        case = trial.suggest_categorical("case", choices["case"]) if "case" in choices else 0
        for axis, raw in spec.axes.items():
            picked = trial.suggest_categorical(axis, choices[axis])
            values[axis] = raw[choices[axis].index(picked)]
        seed = (
            trial.suggest_categorical("seed", choices["seed"])
            if "seed" in choices
            else spec.seeds[0]
        )
        for r in spec.search.ranges:
            if r.integer:
                values[r.name] = trial.suggest_int(
                    r.name, int(r.low), int(r.high), step=int(r.step or 1), log=r.log
                )
            else:
                values[r.name] = trial.suggest_float(r.name, r.low, r.high, step=r.step, log=r.log)
        try:
            config = spec.config_for(case, values, seed)
            validate_point(config, self._n_train_cache)
        except ConfigError as exc:
            storage.set_trial_user_attr(trial._trial_id, "bench_status", "invalid")
            storage.set_trial_user_attr(trial._trial_id, "bench_error", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            self.progress.log(f"{spec.name}: trial {trial.number} sampled an invalid point: {exc}")
            return None
        key = config.trial_key
        slot = trial.user_attrs.get("bench_slot")
        storage.set_trial_user_attr(trial._trial_id, "bench_key", key)
        for other in self.study.get_trials(deepcopy=False):
            if other.number == trial.number or other.user_attrs.get("bench_key") != key:
                continue
            status = other.user_attrs.get("bench_status")
            if status == "failed" and (
                other.user_attrs.get("bench_slot") == slot
                or (self.retry_failed and other.number <= self._before_start)
            ):
                # A failure this sweep was asked to retry (--retry-failed: the ones
                # recorded before this run), or this slot's own earlier attempt, is not a
                # result: run the configuration again instead of copying the failure.
                continue
            if other.state == TrialState.RUNNING or status in RESULT_STATUSES:
                # Same configuration already ran (or is running): record, do not rerun.
                storage.set_trial_user_attr(trial._trial_id, "bench_status", "duplicate")
                storage.set_trial_user_attr(trial._trial_id, "bench_duplicate_of", other.number)
                if "bench_row" in other.user_attrs:
                    storage.set_trial_user_attr(
                        trial._trial_id, "bench_row", other.user_attrs["bench_row"]
                    )
                    self._set_constraints(trial, other.user_attrs["bench_row"])
                if other.state == TrialState.COMPLETE:
                    self.study.tell(trial, other.values)
                else:
                    self.study.tell(trial, state=TrialState.FAIL)
                return None
        return Job(trial, config, key, attempt)

    # -- workers ---------------------------------------------------------------------

    def _worker_plan(self, remaining: int) -> tuple[int, list[dict[str, str]], int]:
        """(count, per-worker environment, torch threads each): one per GPU, or CPU shares."""
        n = max(1, min(self.requested_workers, remaining))  # no idle workers to start
        cpus = _available_cpus()
        gpus = 0
        device = self.spec.device
        if device in ("auto", "cuda"):
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.startswith("cuda:"):
            # One named GPU: one worker. Its environment is left as it is (the trial
            # configs say cuda:N, which must keep meaning the same device in the worker).
            if self.requested_workers > 1:
                self.progress.log(
                    f"{self.spec.name}: {self.requested_workers} workers asked, device {device}: "
                    "one worker per GPU"
                )
            n = 1
            envs = [{}]
        elif gpus:
            if self.requested_workers > gpus:
                self.progress.log(
                    f"{self.spec.name}: {self.requested_workers} workers asked, {gpus} GPU(s): "
                    "one worker per GPU"
                )
            n = min(n, gpus)
            envs = _pinned_envs(n)
        else:
            envs = [
                {"CUDA_VISIBLE_DEVICES": ""} if self.spec.device == "cpu" else {} for _ in range(n)
            ]
        threads = self.threads or max(1, cpus // n)
        for env in envs:
            env.update(
                OMP_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads),
                BENCH_SWEEP_DEVICE=self.spec.device,
            )
        return n, envs, threads

    def _context(self) -> Any:
        """The one process-wide forkserver context of :func:`bench.procs.forkserver_context`.

        Workers fork from a server that has imported torch once: a replacement worker
        (after an OOM) starts in ~0.1 s instead of a spawn's ~2 s, and it inherits none
        of this process's descriptors (locks, DB connections). The forkserver is global
        to the process (the first start fixes its preload list), so there is one list:
        ``bench.procs.PRELOAD`` plus this worker module. If the server was already
        started (say, by ``bench.procs`` earlier in this process), the worker module
        is simply imported on first use.
        """
        # OpenMP's default spin-waiting is pathological when cores are shared (other
        # workers, other jobs): on this 2-core machine under load a small-batch trial
        # took 32-188 s with 2 threads and 0.3 s with 1; with OMP_WAIT_POLICY=PASSIVE,
        # 0.3-0.5 s either way. libgomp reads it when torch loads, i.e. in the
        # forkserver, which inherits this environment. A user's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from bench.procs import PRELOAD, forkserver_context

        ctx = forkserver_context()
        if hasattr(ctx, "set_forkserver_preload"):
            ctx.set_forkserver_preload([*PRELOAD, "bench.sweep.worker"])
        return ctx

    def _start_workers(self, *, remaining: int) -> None:
        # Results arrive as pickled DataFrames and leave as parquet: load pandas and
        # pyarrow here while the workers start, not on the first result.
        import bench.procs  # noqa: F401 - unreported_trial_result for dead workers
        import bench.store  # noqa: F401

        n, envs, threads = self._worker_plan(remaining)
        self._threads = threads
        self.workers = [Worker(index=i, env=env) for i, env in enumerate(envs)]
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        from bench.sweep.worker import worker_main

        ctx = self._context()
        parent, child = ctx.Pipe(duplex=True)
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        w.process = ctx.Process(
            target=worker_main,
            args=(child,),
            kwargs=dict(
                env=w.env,
                threads=self._threads,
                cap_bytes=self.spec.memory_cap_bytes,
                sweep=self.spec.name,
                results_dir=str(self.folder),
                log_path=str(logs / f"worker-{self.handle.coordination.owner}-{w.index}.log"),
                coordinator_pid=os.getpid(),
            ),
            name=f"bench-sweep-worker-{w.index}",
            daemon=True,
        )
        w.process.start()
        child.close()
        w.conn, w.pid, w.ready, w.job, w.started = (
            parent,
            w.process.pid,
            False,
            None,
            time.monotonic(),
        )

    def _stop_workers(self) -> None:
        for w in self.workers:
            if w.process is None:
                continue
            try:
                if w.job is None and w.ready:
                    w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            if w.process is None:
                continue
            if w.process.pid is None:  # Ctrl-C came while start() ran: nothing to join
                w.process = None
                continue
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            if w.conn is not None:  # None if interrupted between start() and the handshake
                w.conn.close()
            w.process = None

    def _replace(self, w: Worker) -> None:
        if w.process is not None:
            if w.process.is_alive():
                w.process.kill()
            w.process.join()
            w.conn.close()
        self._spawn(w)

    def _dispatch(self, w: Worker, job: Job) -> bool:
        """Send a job; False (worker replaced, job kept for the next idle worker) when
        the worker's pipe is gone: it exited between trials, so the trial never began."""
        job.started = time.monotonic()
        limit = job.config.time_limit_s
        # run_trial stops itself at time_limit_s; this hard deadline catches a hang.
        job.deadline = None if limit is None else job.started + 1.5 * limit + 60.0
        w.job = job
        # A first reading before the job is sent (the idle worker's high-water mark was
        # reset after its last trial, so this is its RSS as the trial starts): a worker
        # killed within milliseconds still leaves a lower-bound peak, where a reading after
        # the send could find it already dead. Polling in the loop raises it as it runs.
        job.peak_rss = _proc_hwm(w.pid) if w.pid else None
        try:
            w.conn.send((job.trial.number, job.config.to_dict()))
        except (BrokenPipeError, OSError) as exc:
            w.job = None
            self._backlog.append(job)
            self.progress.log(
                f"{self.spec.name}: worker {w.index} was gone before trial {job.trial.number} "
                f"could start ({exc.__class__.__name__}); starting a fresh worker"
            )
            self._replace(w)
            return False
        return True

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> Counts:
        coord = self.handle.coordination
        next_claim = 0.0
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        counts = self._counts()
        self._show(counts)
        while True:
            now = time.monotonic()
            idle = [w for w in self.workers if w.ready and w.job is None]
            if self.spec.search and self._pending:
                self._flush()  # a sampler must see the finished trials before it proposes
            if idle and self._backlog:
                for w in list(idle):
                    if not self._backlog:
                        break
                    idle.remove(w)
                    self._dispatch(w, self._backlog.pop(0))
            if idle and now >= next_claim:
                with coord.mutex():
                    jobs = self._claim(len(idle))
                for w, job in zip(idle, jobs, strict=False):
                    self._dispatch(w, job)
                # Fewer tickets than idle workers: the queue is empty for now.
                next_claim = now + CLAIM_POLL_S if len(jobs) < len(idle) else 0.0
            if self._pending:
                self._flush()
            if not any(w.job for w in self.workers) and not self._backlog:
                counts = self._counts()
                self._show(counts)
                if counts.complete:
                    return counts
                if now >= next_reconcile:
                    # Nothing to do here: are other coordinators' trials still alive?
                    with coord.mutex():
                        counts = self._reconcile(startup=False)
                    next_reconcile = now + RECONCILE_EVERY_S
                    if counts.complete:
                        return counts
                    if counts.waiting:
                        next_claim = 0.0
                        continue
            busy = any(w.job for w in self.workers)
            handles = [
                h
                for w in self.workers
                if w.process is not None
                for h in (w.conn, w.process.sentinel)
            ]
            timeout = (
                # Busy: wake every 0.1 s to poll the workers' peak RSS.
                0.1 if busy or not idle else min(0.5, max(0.02, next_claim - time.monotonic()))
            )
            ready = wait_any(handles, timeout=timeout)
            for w in self.workers:
                if w.process is None:
                    continue
                finished = False
                if w.conn in ready:
                    finished = self._receive(w)
                elif w.process.sentinel in ready and not w.conn.poll(0):
                    finished = self._died(w)
                if finished:
                    next_claim = 0.0
            for w in self.workers:
                if w.job is not None and w.pid is not None:
                    hwm = _proc_hwm(w.pid)
                    if hwm is not None:
                        w.job.peak_rss = max(w.job.peak_rss or 0, hwm)
                    if w.job.deadline is not None and time.monotonic() > w.job.deadline:
                        self._timed_out(w)
                        next_claim = 0.0
                elif not w.ready and time.monotonic() - w.started > STARTUP_TIMEOUT_S:
                    raise BenchError(
                        f"worker {w.index} did not start within {STARTUP_TIMEOUT_S:.0f} s"
                    )

    def _show(self, counts: Counts) -> None:
        # Finished trials waiting to be written are still RUNNING in the study.
        running = max(0, counts.running - len(self._pending))
        self.progress.update(done=counts.done, running=running, failed=counts.failed)

    def _receive(self, w: Worker) -> bool:
        """Handle one message; True when a trial finished."""
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            return self._died(w)
        kind = message[0]
        if kind == "ready":
            w.ready = True
            if self._first_ready is None:
                self._first_ready = time.monotonic()
            if message[2]:
                self.progress.log(f"{self.spec.name}: worker {w.index}: {message[2]}")
            return False
        if kind == "startup-error":
            raise BenchError(f"worker {w.index} could not start: {message[2]}")
        job = w.job
        if job is None:
            return False
        busy = time.monotonic() - job.started
        # Every reply ends with `retire`: None, or why the worker cannot take another
        # trial (its CPU memory cap could not be put back); it exits after this reply.
        *message, retire = message
        if kind == "result":
            _, _, row, steps = message
            self._record(job, row, steps, busy)
        elif kind == "invalid":
            self._record_failure(job, "failed", f"invalid configuration: {message[2]}", busy)
        else:  # "error": an exception escaped run_trial
            _, _, text, oom, _tb = message
            self._record_failure(job, "oom" if oom else "failed", text, busy)
        status = self._last_status
        w.job = None
        if retire:
            self.progress.log(
                f"{self.spec.name}: worker {w.index} retired after trial {job.trial.number} "
                f"({retire}); starting a fresh worker"
            )
        if status in RESTART_AFTER or retire:
            self._replace(w)
        return True

    def _died(self, w: Worker) -> bool:
        from bench.failures import status_for_exit
        from bench.procs import exit_text as _exit_text

        w.process.join(timeout=5)
        code = w.process.exitcode
        job = w.job
        w.job = None
        if job is None:
            if not w.ready:
                raise BenchError(
                    f"worker {w.index} died while starting ({_exit_text(code)}); see {self.folder / 'logs'}"
                )
            self._replace(w)
            return False
        status = status_for_exit(code)
        error = f"worker process {_exit_text(code)} during the trial"
        if status == "oom":
            error += " (SIGKILL: counted as out of memory, as the kernel OOM killer sends it)"
        self._record_failure(job, status, error, time.monotonic() - job.started)
        self._replace(w)
        return True

    def _timed_out(self, w: Worker) -> None:
        job = w.job
        w.job = None
        w.process.kill()
        self._record_failure(
            job,
            "failed",
            f"no result {time.monotonic() - job.started:.0f} s after a "
            f"time_limit_s of {job.config.time_limit_s:g} s: worker killed",
            time.monotonic() - job.started,
        )
        self._replace(w)

    # -- recording -------------------------------------------------------------------

    def _record_failure(self, job: Job, status: str, error: str, busy: float) -> None:
        from bench.procs import unreported_trial_result

        result = unreported_trial_result(job.config, status=status, error=error, sweep=self.spec.name)
        result.trial["cpu_peak_rss_bytes"] = job.peak_rss
        self._record(job, result.trial, result.steps, busy)

    def _record(self, job: Job, row: dict, steps: Any, busy: float) -> None:
        """Queue a finished trial; it is written after the worker has its next trial, so
        the writing (parquet, study) overlaps training instead of adding to it."""
        self._last_status = row.get("status", "failed")
        self._pending.append((job, row, steps, busy))

    def _flush(self) -> None:
        while self._pending:
            self._write_record(*self._pending.pop(0))

    def _write_record(self, job: Job, row: dict, steps: Any, busy: float) -> None:
        from optuna.trial import TrialState

        from bench.store import write_trial

        row = dict(row)
        row["sweep"] = self.spec.name
        row["attempt"] = job.attempt
        row["optuna_trial"] = job.trial.number
        if row.get("cpu_peak_rss_bytes") is None and job.peak_rss:
            row["cpu_peak_rss_bytes"] = job.peak_rss
        if row.get("trial_key") != job.key:
            raise BenchError(
                f"worker returned key {row.get('trial_key')} for {job.key}: config round trip broke"
            )
        status = row.get("status", "failed")
        # Parquet first (atomic, per key), then the study: see the module docstring.
        write_trial(self.folder, row, steps, per_key=True)
        storage = self.handle.storage
        tid = job.trial._trial_id
        storage.set_trial_user_attr(tid, "bench_row", {k: _json_safe(v) for k, v in row.items()})
        storage.set_trial_user_attr(tid, "bench_status", status)
        self._set_constraints(job.trial, row)
        values = [row.get(o.column) for o in self.spec.objectives]
        ok = status == "ok" and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        try:
            if ok:
                self.study.tell(job.trial, [float(v) for v in values])
            else:
                self.study.tell(job.trial, state=TrialState.FAIL)
        except Exception as exc:  # noqa: BLE001 - the rows are safe; say why the study is not
            self.progress.log(
                f"{self.spec.name}: could not finish Optuna trial {job.trial.number}: {exc}"
            )
        self._ran_here += 1
        self._busy_here += busy
        self._train_here += float(row.get("train_time_s") or 0.0)
        point = self.spec.points_by_key.get(job.key)
        params = point.label if point is not None else _config_label(job.config)
        loss = row.get("final_loss")
        loss_text = (
            f" final_loss={loss:.4g}" if isinstance(loss, float) and math.isfinite(loss) else ""
        )
        err = f" ({row.get('error')})" if row.get("error") and status != "ok" else ""
        counts = self._counts()
        self._show(counts)
        self.progress.trial_line(f"{status:<8} {job.key} {params}{loss_text} [{busy:.1f} s]{err}")

    def _announce(self, counts: Counts) -> None:
        spec = self.spec
        p = self.progress
        first = spec.question.splitlines()[0] if spec.question else ""
        p.log(f"sweep {spec.name}: {first}")
        extra = f" ({spec.duplicates} duplicate points collapsed)" if spec.duplicates else ""
        mode = (
            f"search ({spec.search.sampler}, {spec.search.n_trials} trials)"
            if spec.search
            else "grid"
        )
        p.log(
            f"  {mode}: {spec.total} trials{extra}; storage {self.handle.description}; results {self.folder}"
        )
        if spec.skipped:
            p.log(f"  skipping {len(spec.skipped)} invalid grid point(s):")
            for params, reason in spec.skipped[:10]:
                p.log(f"    {describe_point(params)}: {reason}")
            if len(spec.skipped) > 10:
                p.log(f"    ... and {len(spec.skipped) - 10} more")
        if counts.done:
            p.log(f"  resuming: {counts.done} done, {counts.waiting} queued")


def _config_label(config: Any) -> str:
    """Search trials: the sampled values that differ from the defaults, briefly."""
    c = config
    return f"{c.workload} {c.mode} b={c.batch_size} k={c.accumulation_steps} lr={c.lr:g} {c.precision} seed={c.seed}"


def _failed(trial: Any) -> bool:
    """A finished slot whose result is a failure: its own, or, for a duplicate, the
    failure it copied (so --retry-failed re-runs that too, and it then finds the retry)."""
    status = trial.user_attrs.get("bench_status")
    if status == "duplicate":
        return (trial.user_attrs.get("bench_row") or {}).get("status") == "failed"
    return status == "failed"


def run_sweep(spec: SweepSpec, **options: Any) -> Summary:
    """Run (or resume, or join) a sweep until every trial has a result. ``options`` are
    SweepRunner's keyword arguments (workers, storage, results, retry_failed, ...)."""
    return SweepRunner(spec, **options).run()


def json_summary(summary: Summary) -> str:
    c = summary.counts
    return json.dumps(
        {
            "sweep": summary.sweep,
            "total": summary.total,
            "done": c.done,
            "statuses": dict(c.statuses),
            "wall_s": summary.wall_s,
            "startup_s": summary.startup_s,
            "ran_here": summary.ran_here,
            "train_time_here_s": summary.train_time_here_s,
            "worker_busy_s": summary.worker_busy_s,
            "skipped": summary.skipped,
        }
    )
