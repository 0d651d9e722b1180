"""The sweep's warm workers: spawn, dispatch, receive, notice deaths and hangs, replace.

A worker is the one child loop of :mod:`bench.procs` kept running: it warms up once,
then runs one trial at a time and replies with a typed message. A worker that dies
mid-trial (SIGKILL from the OOM killer, a segfault) ends its trial with
:func:`bench.failures.status_for_exit`; after any ``oom`` or ``failed`` trial the worker
is replaced, so the next trial starts clean, and so is a worker whose reply says it
must retire (its CPU memory cap could not be put back). An interrupt is not a trial's
end: a worker that was interrupted (SIGINT: it replies so) or killed by SIGINT or
SIGTERM gives its trial back to the backlog, which the next idle worker takes, unless
the coordinator is stopping (then it starts no worker in its place). The pool records
nothing: it hands each ended trial (:class:`Ended`) to its caller.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.procs import ChildProcess, ChildSetup
from bench.procs import messages as msg
from bench.sweep.tickets import Job

RESTART_AFTER = ("oom", "failed")
STARTUP_TIMEOUT_S = 300.0


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    child: ChildProcess | None = None
    ready: bool = False
    job: Job | None = None  # the trial it runs; a stack's first member
    stack: list[Job] = field(default_factory=list)  # every member when it runs a stack


@dataclass(frozen=True)
class Ended:
    """A trial that ended on a worker, one way or another."""

    job: Job
    busy_s: float  # dispatch to end
    status: str
    error: str | None = None
    trial: dict | None = None  # the worker's row; None: it sent none (a row is made for it)
    steps: Any = None  # the worker's steps (pandas.DataFrame), with ``trial``


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pinned_envs(n: int) -> list[dict[str, str]]:
    """CUDA_VISIBLE_DEVICES for n workers, one GPU each: the parent's own i-th visible
    entry when it has CUDA_VISIBLE_DEVICES ("2,3", MIG UUIDs), else the ordinal i."""
    from bench.meters.nvml import visible_device_entry

    envs = []
    for i in range(n):
        entry = visible_device_entry(i)
        envs.append({"CUDA_VISIBLE_DEVICES": entry if entry is not None else str(i)})
    return envs


def worker_plan(
    spec: Any,
    *,
    requested: int | None,
    remaining: int,
    threads: int | None,
    log: Callable[[str], None],
) -> tuple[int, list[dict[str, str]], int]:
    """(count, per-worker environment, torch threads each): one per GPU, or CPU shares.

    ``requested`` None chooses from the device: one worker per GPU; on the CPU one
    worker per core, one torch thread each (the models a CPU sweeps are small, and they
    run 2-5x slower on two threads than on one, while trials in parallel scale with the
    cores: docs/benchmarks.md, "Sweep defaults").
    """
    gpus = 0
    device = spec.device
    if device in ("auto", "cuda"):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested is None:
        requested = gpus if gpus and not device.startswith("cuda:") else available_cpus()
        if not gpus:
            threads = threads or max(1, available_cpus() // requested)
    n = max(1, min(requested, remaining))  # no idle workers to start
    if device.startswith("cuda:"):
        # One named GPU: one worker. Its environment is left as it is (the trial
        # configs say cuda:N, which must keep meaning the same device in the worker).
        if requested > 1:
            log(f"{spec.name}: {requested} workers asked, device {device}: one worker per GPU")
        n = 1
        envs: list[dict[str, str]] = [{}]
    elif gpus:
        if requested > gpus:
            log(f"{spec.name}: {requested} workers asked, {gpus} GPU(s): one worker per GPU")
        n = min(n, gpus)
        envs = pinned_envs(n)
    else:
        envs = [{"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {} for _ in range(n)]
    threads = threads or max(1, available_cpus() // n)
    for env in envs:
        env.update(
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            BENCH_SWEEP_DEVICE=device,
        )
    return n, envs, threads


class WorkerPool:
    def __init__(
        self,
        spec: Any,
        *,
        folder: Path,
        owner: str,
        log: Callable[[str], None],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.owner = owner  # the coordinator's id: names the worker logs
        self.log = log
        self.stopping = stopping  # True once the coordinator stops: start no more workers
        self.workers: list[Worker] = []
        # Claimed jobs whose dispatch failed or that wait for a worker: run them first.
        # A list is a stack (bench.stack), dispatched as one.
        self.backlog: list[Job | list[Job]] = []
        self.threads = 1
        self.first_ready: float | None = None  # time.monotonic() of the first Ready

    # -- starting and stopping -------------------------------------------------------

    def start(self, envs: list[dict[str, str]], threads: int) -> None:
        # OpenMP's default spin-waiting is pathological when cores are shared (other
        # workers, other jobs): on a 2-core machine under load a small-batch trial took
        # 32-188 s with 2 threads and 0.3 s with 1; with OMP_WAIT_POLICY=PASSIVE,
        # 0.3-0.5 s either way. libgomp reads it when torch loads, i.e. in the
        # forkserver, which inherits this environment. A user's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.threads = threads
        self.workers = [Worker(index=i, env=env) for i, env in enumerate(envs)]
        for w in self.workers:
            self.spawn(w)

    def spawn(self, w: Worker) -> None:
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        setup = ChildSetup(
            log_path=str(logs / f"worker-{self.owner}-{w.index}.log"),
            env=w.env,
            threads=self.threads,
            device=self.spec.device,
            cap_bytes=self.spec.memory_cap_bytes,
            warm_up=True,
            watch_pid=os.getpid(),
            sweep=self.spec.name,
            results_dir=str(self.folder),
        )
        # Held before start(): an interrupt during it leaves a child that stop() skips.
        from bench.ddp.launch import spec_starts_ranks

        w.child, w.ready, w.job = (
            ChildProcess(
                setup,
                name=f"bench-sweep-worker-{w.index}",
                daemon=not spec_starts_ranks(self.spec),
            ),
            False,
            None,
        )
        w.stack = []
        w.child.start()

    def replace(self, w: Worker) -> None:
        if w.child is not None:
            w.child.kill()
            w.child.close()
        if self.stopping():
            w.child, w.ready = None, False
            return
        self.spawn(w)

    def stop(self) -> None:
        """Ask idle workers to exit, give every worker 2 s, then kill what is left."""
        for w in self.workers:
            if w.child is not None and w.job is None and w.ready:
                with contextlib.suppress(OSError):  # it exited meanwhile
                    w.child.send(msg.Stop())
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            if w.child is not None:
                w.child.stop(deadline=deadline)
                w.child = None

    # -- jobs ------------------------------------------------------------------------

    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.ready and w.job is None]

    def starting(self) -> list[Worker]:
        """Workers started that have not said Ready yet: idle within a second or two."""
        return [w for w in self.workers if w.child is not None and not w.ready]

    def busy(self) -> bool:
        return any(w.job for w in self.workers)

    def jobs_in_hand(self) -> list[Job]:
        """The claimed trials that have not ended: running on a worker, or backlogged."""
        held = [j for w in self.workers for j in (w.stack or ([w.job] if w.job else []))]
        return held + [j for item in self.backlog for j in _jobs(item)]

    def dispatch(self, w: Worker, job: Job) -> bool:
        """Send a job; False (worker replaced, job kept in the backlog for the next idle
        worker) when the worker's pipe is gone: it exited between trials, so the trial
        never began."""
        job.started = time.monotonic()
        limit = job.config.time_limit_s
        # run_trial stops itself at time_limit_s; this hard deadline catches a hang.
        job.deadline = None if limit is None else job.started + 1.5 * limit + 60.0
        w.job = job
        # A first reading before the job is sent (the idle worker's high-water mark was
        # reset after its last trial, so this is its RSS as the trial starts): a worker
        # killed within milliseconds still leaves a lower-bound peak, where a reading after
        # the send could find it already dead. Polling in wait() raises it as it runs.
        job.peak_rss = w.child.peak_rss()
        try:
            w.child.send(msg.RunTrial(job.trial.number, job.config.to_dict()))
        except OSError as exc:  # BrokenPipeError among them
            w.job = None
            self.backlog.append(job)
            self.log(
                f"{self.spec.name}: worker {w.index} was gone before trial {job.trial.number} "
                f"could start ({exc.__class__.__name__}); starting a fresh worker"
            )
            self.replace(w)
            return False
        return True

    def dispatch_stack(self, w: Worker, jobs: list[Job]) -> bool:
        """Send the members of one stack as one job (bench.stack.worker.run_stack_job);
        a stack of one is a plain trial. False as for :meth:`dispatch`."""
        if len(jobs) == 1:
            return self.dispatch(w, jobs[0])
        from bench.stack.worker import run_stack_job

        now = time.monotonic()
        limit = jobs[0].config.time_limit_s  # shared by a stack's members
        for job in jobs:
            # The stack stops itself at S limits (bench.stack.train); this catches a hang.
            job.started = now
            job.deadline = None if limit is None else now + 1.5 * limit * len(jobs) + 60.0
        w.job, w.stack = jobs[0], list(jobs)
        jobs[0].peak_rss = w.child.peak_rss()
        configs = [job.config.to_dict() for job in jobs]
        query = msg.Query(
            jobs[0].trial.number,
            run_stack_job,
            (configs, self.spec.name, str(self.folder)),
        )
        try:
            w.child.send(query)
        except OSError as exc:
            w.job, w.stack = None, []
            self.backlog.append(list(jobs))
            self.log(
                f"{self.spec.name}: worker {w.index} was gone before a stack of {len(jobs)} "
                f"could start ({exc.__class__.__name__}); starting a fresh worker"
            )
            self.replace(w)
            return False
        return True

    def dispatch_backlog(self, idle: list[Worker]) -> list[Worker]:
        """Give backlogged jobs to idle workers first; returns the workers still idle."""
        idle = list(idle)
        while idle and self.backlog:
            item = self.backlog.pop(0)
            if isinstance(item, list):
                self.dispatch_stack(idle.pop(0), item)
            else:
                self.dispatch(idle.pop(0), item)
        return idle

    def wait(self, timeout: float) -> list[Ended]:
        """Wait up to ``timeout`` for replies and deaths; poll peaks and deadlines. Returns
        the trials that ended (their workers already replaced where needed)."""
        live = [w for w in self.workers if w.child is not None]
        ready = wait_any(
            [h for w in live for h in (w.child.conn, w.child.sentinel)], timeout=timeout
        )
        ended: list[Ended] = []
        for w in live:
            if w.child.conn in ready:
                ended += self._receive(w)
            elif w.child.sentinel in ready and not w.child.conn.poll(0):
                ended += self._died(w)
        for w in self.workers:
            if w.child is None:  # not replaced: the coordinator is stopping
                continue
            if w.job is not None:
                hwm = w.child.peak_rss()
                if hwm is not None:
                    w.job.peak_rss = max(w.job.peak_rss or 0, hwm)
                if w.job.deadline is not None and time.monotonic() > w.job.deadline:
                    ended += self._timed_out(w)
            elif not w.ready and time.monotonic() - w.child.started > STARTUP_TIMEOUT_S:
                raise BenchError(f"worker {w.index} did not start within {STARTUP_TIMEOUT_S:.0f} s")
        return ended

    def _receive(self, w: Worker) -> list[Ended]:
        try:
            message = w.child.conn.recv()
        except (EOFError, OSError):
            return self._died(w)
        if isinstance(message, msg.Ready):
            w.ready = True
            if self.first_ready is None:
                self.first_ready = time.monotonic()
            if message.cap is not None:
                self.log(f"{self.spec.name}: worker {w.index}: {message.cap.describe()}")
            return []
        if isinstance(message, msg.StartupError):
            if message.interrupted or self.stopping():
                self.replace(w)  # an interrupt, not a reason this worker cannot start
                return []
            raise BenchError(f"worker {w.index} could not start: {message.error}")
        job, w.job = w.job, None
        stack, w.stack = w.stack, []
        if job is None:
            return []
        if isinstance(message, msg.Interrupted) or _interrupted_stack(message):
            self._give_back(w, stack or job, "SIGINT")
            return []
        busy = time.monotonic() - job.started
        ends = _stack_ended(stack, message, busy) if stack else [_ended(job, message, busy)]
        if message.retire:
            self.log(
                f"{self.spec.name}: worker {w.index} retired after trial {job.trial.number} "
                f"({message.retire}); starting a fresh worker"
            )
        if any(end.status in RESTART_AFTER for end in ends) or message.retire:
            self.replace(w)
        return ends

    def _died(self, w: Worker) -> list[Ended]:
        from bench.failures import interrupted_exit, status_for_exit

        w.child.join(timeout=5)
        job, w.job = w.job, None
        stack, w.stack = w.stack, []
        if job is None:
            if not w.ready and not self.stopping() and not interrupted_exit(w.child.exitcode):
                raise BenchError(
                    f"worker {w.index} died while starting ({w.child.exit_text()}); "
                    f"see {self.folder / 'logs'}"
                )
            self.replace(w)
            return []
        if interrupted_exit(w.child.exitcode) or self.stopping():
            # While the coordinator stops, a death is the stop's doing: a signal to the
            # whole process group also ends the forkserver, and then the worker's exit
            # code is unknown (multiprocessing reports 255).
            self._give_back(w, stack or job, w.child.exit_text().removeprefix("killed by "))
            return []
        status = status_for_exit(w.child.exitcode)
        error = f"worker process {w.child.exit_text()} during the trial"
        if status == "oom":
            error += " (SIGKILL: counted as out of memory, as the kernel OOM killer sends it)"
        self.replace(w)
        for member in stack:
            member.peak_rss = job.peak_rss  # the worker's peak: the whole stack's
        busy = (time.monotonic() - job.started) / max(1, len(stack))
        return [Ended(member, busy, status, error) for member in (stack or [job])]

    def _give_back(self, w: Worker, job: Job | list[Job], how: str) -> None:
        """An interrupted trial (or stack) has no result: back to the backlog, and a
        fresh worker (the old one stopped at an arbitrary point)."""
        self.backlog.append(job)
        if not self.stopping():  # else the coordinator says what it gives back
            what = (
                f"a stack of {len(job)} trials" if isinstance(job, list)
                else f"trial {job.trial.number}"
            )  # fmt: skip
            self.log(
                f"{self.spec.name}: {what} was interrupted ({how}) on "
                f"worker {w.index}; it goes back to the queue"
            )
        self.replace(w)

    def _timed_out(self, w: Worker) -> list[Ended]:
        job, w.job = w.job, None
        stack, w.stack = w.stack or [job], []
        w.child.kill()
        busy = time.monotonic() - job.started
        error = (
            f"no result {busy:.0f} s after a time_limit_s of {job.config.time_limit_s:g} s: "
            "worker killed"
        )
        if len(stack) > 1:
            error += f" (a stack of {len(stack)})"
        self.replace(w)
        return [Ended(member, busy / len(stack), "failed", error) for member in stack]


def _ended(job: Job, reply: Any, busy: float) -> Ended:
    """A worker's reply to ``job`` as an Ended trial."""
    if isinstance(reply, msg.TrialDone):
        status = reply.trial.get("status", "failed")
        return Ended(job, busy, status, trial=reply.trial, steps=reply.steps)
    if isinstance(reply, msg.Invalid):
        return Ended(job, busy, "failed", f"invalid configuration: {reply.message}")
    if isinstance(reply, msg.TrialError):  # an exception escaped run_trial
        return Ended(job, busy, "oom" if reply.oom else "failed", reply.error)
    return Ended(job, busy, "failed", f"worker sent {type(reply).__name__} for a trial")


def _jobs(item: Job | list[Job]) -> list[Job]:
    return item if isinstance(item, list) else [item]


def _interrupted_stack(reply: Any) -> bool:
    """A stack's query answers a KeyboardInterrupt as an error: not its result."""
    return isinstance(reply, msg.Answer) and (reply.error or "").startswith("KeyboardInterrupt")


def _stack_ended(stack: list[Job], reply: Any, busy: float) -> list[Ended]:
    """A worker's reply to a stack as one Ended per member; each member's busy time is
    the stack's divided by its size."""
    from bench.stack.worker import member_rows

    share = busy / len(stack)
    if isinstance(reply, msg.Answer) and reply.error is None:
        rows = member_rows(reply.value, len(stack))
        if rows is not None:
            return [
                Ended(job, share, row.get("status", "failed"), trial=row, steps=steps)
                for job, (row, steps) in zip(stack, rows, strict=True)
            ]
    if isinstance(reply, msg.Answer):
        error = reply.error or "the stack's worker sent no rows"
        status = "oom" if "OutOfMemory" in error else "failed"
        return [Ended(job, share, status, f"stacked run: {error}") for job in stack]
    if isinstance(reply, msg.Invalid):
        return [Ended(job, share, "failed", f"invalid stack: {reply.message}") for job in stack]
    return [Ended(job, share, "failed", f"worker sent {type(reply).__name__}") for job in stack]
