"""The sweep coordinator's loop: claim tickets, hand them to warm workers, record what
ends, until every trial has a result; resume and join as the tickets allow.

The rooms: :mod:`~bench.sweep.tickets` (Optuna ticket bookkeeping: exactly once, lost
trials), :mod:`~bench.sweep.pool` (the warm workers, on :mod:`bench.procs`),
:mod:`~bench.sweep.recorder` (parquet before ``tell``), :mod:`~bench.sweep.study`
(opening the study), :mod:`~bench.console` (the console).

Exit code (:attr:`Summary.exit_code`): 0 when every trial has a result and none failed;
1 when some trial failed, or when every trial ended ``invalid`` (search mode: each
sampled point was refused, so nothing trained; the run says so on its last line);
128 + the signal's number (130, 143) when SIGINT or SIGTERM stopped it. A full disk
raises :class:`~bench.failures.DiskFull` (exit 75 at the command line).
With ``--retry-failed`` a failure recorded before this run is not a result in search
mode either: a slot that samples that configuration runs it again.

SIGINT and SIGTERM (:class:`StopSignals`): the first one asks the loop to stop. It
writes what has ended, stops the workers and gives the trials they held back to the
queue (:meth:`~bench.sweep.tickets.Tickets.release`); the same command resumes. A second
one interrupts at once (KeyboardInterrupt); what it leaves is a killed sweep's state,
which the next start repairs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bench.console import Progress, format_duration
from bench.errors import BenchError, ConfigError
from bench.failures import INTERRUPT_SIGNALS, DiskFull, is_disk_full
from bench.sweep.pool import WorkerPool, worker_plan
from bench.sweep.recorder import Recorder
from bench.sweep.spec import SweepSpec, describe_point
from bench.sweep.storage import StorageHandle, open_storage
from bench.sweep.study import discard_if_unused, open_study
from bench.sweep.tickets import Counts, Tickets

CLAIM_POLL_S = 1.0  # idle coordinator: look for new tickets this often
RECONCILE_EVERY_S = 5.0  # idle coordinator: look for lost trials of dead owners this often


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
    stopped_by: int | None = None  # the signal that stopped the run before the end
    workers: int = 0  # worker processes started (0: none were needed)
    threads: int = 0  # torch threads each

    @property
    def all_invalid(self) -> bool:
        """Every trial ended 'invalid' (search mode: each sampled point was refused), so
        nothing ran: a sweep that answers nothing, not a success."""
        s = self.counts.statuses
        return bool(s) and s.get("invalid", 0) == sum(s.values())

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return 128 + self.stopped_by  # as a shell reports a death by that signal
        if not self.counts.complete or self.counts.statuses.get("failed") or self.all_invalid:
            return 1
        return 0


def check_flags(workers: int | None, threads: int | None) -> None:
    """--workers / --threads: the one check, for the command and for run_sweep (None:
    chosen from the device, bench.sweep.pool.worker_plan)."""
    if workers is None:
        pass
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError(f"--threads must be >= 1, got {threads}")


class StopSignals:
    """SIGINT and SIGTERM while a sweep runs: the first one is noted (``received``) for
    the loop to stop at its next turn, a second one raises KeyboardInterrupt at once.

    Installed explicitly, whatever the process inherited: a background job of a
    non-interactive shell (``cmd &`` in a script) starts with SIGINT ignored, and Python
    then leaves it ignored, so a Ctrl-C to the job's process group reached the workers
    but not the coordinator. Put back as they were on exit. Only the main thread can
    install handlers; elsewhere nothing is installed.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in INTERRUPT_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


class SweepRunner:
    def __init__(
        self,
        spec: SweepSpec,
        *,
        workers: int | None = 1,  # None: chosen from the device (bench.sweep.pool.worker_plan)
        storage: str | None = None,
        results: str | Path = "results",
        retry_failed: bool = False,
        threads: int | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        check_flags(workers, threads)
        self.spec = spec
        self.requested_workers = workers
        self.threads = threads
        self.storage_url = storage
        self.folder = Path(results) / spec.name
        self.retry_failed = retry_failed
        self.stream = stream or sys.stderr
        self.progress = Progress(spec.name, spec.total, stream=self.stream, tty=tty)
        self.handle: StorageHandle | None = None
        self.tickets: Tickets | None = None
        self.pool: WorkerPool | None = None
        self.recorder: Recorder | None = None
        self._created_study = False  # this run made the study (see discard_if_unused)
        self.signals = StopSignals()
        self.workers_started = 0  # what worker_plan chose, once workers start
        self.threads_used = 0

    def run(self) -> Summary:
        with self.signals:
            return self._run()

    def _run(self) -> Summary:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t0 = time.monotonic()
        self.handle = open_storage(self.storage_url, self.folder, self.spec.name)
        self.handle.coordination.log = self.progress.log  # reconnect and lease messages
        discard = False
        try:
            counts = self._open()
            self._make_folder()  # after the study check: a refused spec leaves no folder
            self._announce(counts)
            if not counts.complete and not self.signals.received:
                self._start_workers(remaining=counts.total - counts.done)
                counts = self._loop()
        except KeyboardInterrupt:
            self.progress.log(f"{self.spec.name}: interrupted; re-run the same command to resume")
            raise
        except BenchError:
            discard = True  # e.g. no worker could start: see discard_if_unused
            raise
        finally:
            self._close(discard=discard)
        if self.signals.received:
            counts = self.tickets.counts()  # with what _close wrote and gave back
        return self._summarise(counts, time.monotonic() - t0, t0)

    def _open(self) -> Counts:
        """Under the mutex: open the study, give every key that needs one a ticket, and
        remove temporary files that no live writer owns."""
        coord = self.handle.coordination
        with coord.mutex():
            study, self._created_study = open_study(self.spec, self.handle, self.folder)
            self._remove_orphans(alone=not coord.others_alive())
            self.tickets = Tickets(
                self.spec,
                study,
                self.handle.storage,
                self.handle.coordination,
                retry_failed=self.retry_failed,
                log=self.progress.log,
            )
            counts = self.tickets.reconcile(startup=True)
        self.recorder = Recorder(
            self.spec, self.folder, self.tickets, self.progress, show=self._show_counts
        )
        return counts

    def _remove_orphans(self, *, alone: bool) -> None:
        """Temporary files of atomic writes (``.<name>.*.tmp``) that a kill left behind.
        Alone on the folder (no other coordinator alive, and none can start writing
        while this one holds the mutex): all of them. Otherwise those untouched for
        ORPHAN_AGE_S, which no live writer takes that long to finish."""
        from bench.store import ORPHAN_AGE_S, remove_orphaned_temp_files

        removed = remove_orphaned_temp_files(
            self.folder,
            (".", "trials", "steps", "env"),  # ".": a journal repair's rewrite
            older_than_s=None if alone else ORPHAN_AGE_S,
        )
        if removed:
            self.progress.log(
                f"{self.spec.name}: removed {len(removed)} temporary file(s) that no running "
                f"writer owns (left by a killed run)"
            )

    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull.at(self.folder.parent, exc) from None
            raise ConfigError(
                f"--results: cannot create the sweep folder {self.folder}: {exc.strerror or exc}"
            ) from None

    def _start_workers(self, *, remaining: int) -> None:
        self.workers_started, envs, threads = worker_plan(
            self.spec,
            requested=self.requested_workers,
            remaining=remaining,
            threads=self.threads,
            log=self.progress.log,
        )
        self.pool = WorkerPool(
            self.spec,
            folder=self.folder,
            owner=self.handle.coordination.owner,
            log=self.progress.log,
            stopping=lambda: self.signals.received is not None,
        )
        self.pool.start(envs, threads)
        self.threads_used = threads

    def _close(self, *, discard: bool) -> None:
        """Whatever stopped the run: write finished trials (they are results), stop the
        workers, give back the trials they held, drop a study that this failed run
        created, release the coordination."""
        try:
            if self.recorder is not None:
                self.recorder.flush()
        finally:
            if self.pool is not None:
                held = self.pool.jobs_in_hand()
                self.pool.stop()
                self._release(held)
            ran = self.recorder.ran_here if self.recorder is not None else 0
            if discard and self._created_study and not ran and self.tickets is not None:
                with contextlib.suppress(Exception):
                    discard_if_unused(
                        self.spec, self.tickets.study, self.handle, self.folder, self.progress.log
                    )
            self.handle.coordination.close()
            self.progress.close()

    def _release(self, jobs: list) -> None:
        """Give the trials this run held back to the queue, at once: without it they
        would wait, as lost trials, for a coordinator to notice this one is gone. Best
        effort: a trial not given back (a full disk, say) is lost, and runs again too."""
        if not jobs or self.tickets is None:
            return
        why = f"its coordinator stopped ({self.signals.name() or 'an error'}) while it ran"
        try:
            with self.handle.coordination.mutex():
                n = self.tickets.release(jobs, why)
        except Exception:  # noqa: BLE001 - the stop's own reason is what the user must see
            return
        self.progress.log(f"{self.spec.name}: {n} trial(s) that were running go back to the queue")

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> Counts:
        coord = self.handle.coordination
        pool, recorder, tickets = self.pool, self.recorder, self.tickets
        next_claim = 0.0
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        self._show_counts()
        while True:
            if self.signals.received:
                return tickets.counts()
            now = time.monotonic()
            if self.spec.search and recorder.pending:
                recorder.flush()  # a sampler must see the finished trials before it proposes
            idle = pool.dispatch_backlog(pool.idle())
            if idle and now >= next_claim:
                wanted = len(idle) * self._per_worker
                with coord.mutex():
                    jobs = tickets.claim(wanted)
                self._dispatch(idle, jobs)
                # Fewer tickets than asked for: the queue is empty for now.
                next_claim = now + CLAIM_POLL_S if len(jobs) < wanted else 0.0
            recorder.flush()
            if not pool.busy() and not pool.backlog:
                counts = tickets.counts()
                self._show(counts)
                if counts.complete:
                    return counts
                if now >= next_reconcile:
                    # Nothing to do here: are other coordinators' trials still alive?
                    with coord.mutex():
                        counts = tickets.reconcile(startup=False)
                    next_reconcile = now + RECONCILE_EVERY_S
                    if counts.complete:
                        return counts
                    if counts.waiting:
                        next_claim = 0.0
                        continue
            # Busy: wake every 0.1 s to poll the workers' peak RSS.
            idle_wait = min(0.5, max(0.02, next_claim - time.monotonic()))
            ended = pool.wait(0.1 if pool.busy() or not idle else idle_wait)
            for end in ended:
                recorder.add(end)
            if ended:
                next_claim = 0.0

    @property
    def _per_worker(self) -> int:
        """Tickets to claim per idle worker: a whole stack's when stacking."""
        return self.spec.max_stack if self.spec.execution == "stacked" else 1

    def _dispatch(self, idle: list, jobs: list) -> None:
        """Hand claimed jobs to idle workers: one each, or, stacked, as stacks that share
        a stack key (bench.stack.group), spread over the idle workers and those still
        starting; stacks beyond the idle ones wait in the pool's backlog, where the next
        worker to be ready takes one. (The first worker is ready before the others:
        split over it alone, the whole grid would be one stack on one core.)"""
        pool = self.pool
        if self.spec.execution != "stacked":
            for w, job in zip(idle, jobs, strict=False):
                pool.dispatch(w, job)
            return
        from bench.stack.group import group

        stacks = group(
            jobs,
            max_stack=self.spec.max_stack,
            parts=len(idle) + len(pool.starting()),
            config=lambda job: job.config,
        )
        for i, stack in enumerate(stacks):
            if i < len(idle):
                pool.dispatch_stack(idle[i], stack)
            else:
                pool.backlog.append(stack if len(stack) > 1 else stack[0])

    def _show(self, counts: Counts) -> None:
        # Finished trials waiting to be written are still RUNNING in the study.
        running = max(0, counts.running - len(self.recorder.pending))
        self.progress.update(done=counts.done, running=running, failed=counts.failed)

    def _show_counts(self) -> None:
        self._show(self.tickets.counts())

    # -- the console -----------------------------------------------------------------

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

    def _summarise(self, counts: Counts, wall: float, t0: float) -> Summary:
        spec, rec = self.spec, self.recorder
        first_ready = self.pool.first_ready if self.pool is not None else None
        summary = Summary(
            sweep=spec.name,
            folder=self.folder,
            storage=self.handle.description,
            total=spec.total,
            counts=counts,
            wall_s=wall,
            startup_s=(first_ready - t0) if first_ready else 0.0,
            ran_here=rec.ran_here,
            train_time_here_s=rec.train_here_s,
            worker_busy_s=rec.busy_here_s,
            skipped=len(spec.skipped),
            stopped_by=self.signals.received,
            workers=self.workers_started,
            threads=self.threads_used,
        )
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(counts.statuses.items())) or "none"
        self.progress.log(
            f"{spec.name}: {counts.done}/{counts.total} trials done ({statuses}) in {format_duration(wall)}; "
            f"ran {rec.ran_here} here -> {self.folder} (study {spec.name!r} in {self.handle.description})"
        )
        if summary.stopped_by is not None:
            self.progress.log(
                f"{spec.name}: interrupted ({self.signals.name()}); re-run the same command to resume"
            )
        elif summary.all_invalid:
            self.progress.log(
                f"{spec.name}: every trial was an invalid configuration, nothing was trained "
                "(see the messages above); exit code 1"
            )
        return summary


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
            "stopped_by": summary.stopped_by,
            "workers": summary.workers,
            "threads": summary.threads,
        }
    )
