"""One trial in a fresh process, optionally under a memory cap: what an oom probe runs.

The child is the one child loop (:mod:`bench.procs.child`) with ``max_jobs=1``: it
applies the cap before the trial, runs it, and exits. The parent polls the child's RSS
high-water mark while it runs (a measurement that survives a kill), kills it at the
timeout, and turns a death without a result into a row whose status comes from
:func:`bench.failures.status_for_exit`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.procs import messages as msg
from bench.procs.caps import CapInfo
from bench.procs.child import ChildSetup
from bench.procs.handle import ChildProcess
from bench.procs.unreported import unreported_trial_result


@dataclass
class IsolatedRun:
    """A trial run in a child: its result, the cap applied, and the child's own numbers."""

    result: Any  # bench.trial.TrialResult
    cap: CapInfo | None
    stats: dict = field(default_factory=dict)  # child_rss_hwm_bytes, child_max_reserved_bytes ...
    wall_s: float = 0.0
    exitcode: int | None = None
    reported: bool = True  # False: the child died before sending anything (row synthesised)
    timed_out: bool = False  # killed by us at the timeout (not by anyone else)

    def to_dict(self) -> dict:
        return {"cap": None if self.cap is None else asdict(self.cap), "stats": dict(self.stats)}


@dataclass
class _Watched:
    """What the parent saw of a one-shot child."""

    reply: Any = None  # StartupError or a reply; None: the child never sent one
    cap: CapInfo | None = None
    rss_hwm: int | None = None
    timed_out: bool = False


def run_isolated(
    config,
    *,
    cap_bytes: int | None = None,
    timeout_s: float | None = None,
    sweep: str | None = None,
    stack_size: int | None = None,
) -> IsolatedRun:
    """Run ``config`` (a TrialConfig) with bench.trial.run_trial in a fresh process; with
    ``stack_size``, that many members of it as one stack (bench.stack.worker.probe_stack_job).

    The child's fate decides the row: a reported result is returned as is; a child that
    died without reporting gets a synthesised row whose status comes from
    :func:`bench.failures.status_for_exit` (SIGKILL, the kernel OOM killer's signal,
    is "oom"); a timeout kills the child and is "failed". A BenchError raised in the
    child (invalid config, impossible cap) is raised here. An interrupt (the child was
    interrupted, or killed by SIGINT or SIGTERM) is no result: KeyboardInterrupt here.
    """
    log_fd, log_path = tempfile.mkstemp(prefix="bench-trial-", suffix=".log")
    os.close(log_fd)
    setup = ChildSetup(
        log_path=log_path, device=config.device, cap_bytes=cap_bytes, max_jobs=1, sweep=sweep
    )
    child = ChildProcess(setup, name=f"bench-trial-b{config.batch_size}")
    started = time.perf_counter()
    try:
        child.start()
        deadline = None if timeout_s is None else started + timeout_s
        job: msg.RunTrial | msg.Query = msg.RunTrial(0, config.to_dict())
        if stack_size is not None:
            from bench.stack.worker import probe_stack_job

            job = msg.Query(0, probe_stack_job, (config.to_dict(), stack_size))
        watched = _watch(child, job, deadline)
        _finish(child, watched)
        wall = time.perf_counter() - started
        if watched.reply is None:
            return _unreported(config, child, watched, wall, timeout_s, log_path, sweep)
        return _reported(config, child, watched, wall, sweep)
    finally:
        if child.is_alive():  # interrupted (KeyboardInterrupt): do not leave it running
            child.kill()
        child.close()
        Path(log_path).unlink(missing_ok=True)


def run_in_subprocess(
    config,
    *,
    cap_bytes: int | None = None,
    timeout_s: float | None = None,
    sweep: str | None = None,
):
    """Run one trial in a fresh process (see :func:`run_isolated`); returns its TrialResult."""
    return run_isolated(config, cap_bytes=cap_bytes, timeout_s=timeout_s, sweep=sweep).result


def run_ladder(configs: list, *, cap_bytes: int | None, timeout_s: float | None = None) -> list:
    """Run ``configs`` (TrialConfigs, in order) one after another in one fresh child
    under one cap, each job's peak sampled on its own; stop after the first that does
    not end "ok". Returns an IsolatedRun per job run (``timeout_s`` is per job).

    What the OOM memory model fits its line on: one process start for a whole ladder
    of batch sizes. Not boundary evidence: a job runs after others in the same process,
    which a user's fresh process does not (bench.oom.model_search confirms in fresh
    ones)."""
    log_fd, log_path = tempfile.mkstemp(prefix="bench-ladder-", suffix=".log")
    os.close(log_fd)
    setup = ChildSetup(
        log_path=log_path,
        device=configs[0].device,
        cap_bytes=cap_bytes,
        max_jobs=len(configs),
        sample_peak=True,
    )
    child = ChildProcess(setup, name="bench-ladder")
    runs: list[IsolatedRun] = []
    cap = None
    try:
        child.start()
        for i, config in enumerate(configs):
            started = time.perf_counter()
            job = msg.RunTrial(i, config.to_dict())
            if i:  # the child said Ready before the first job only
                child.send(job)
            deadline = None if timeout_s is None else started + timeout_s
            watched = _watch(child, job, deadline)
            cap = watched.cap = watched.cap or cap
            wall = time.perf_counter() - started
            if watched.reply is None:
                _finish(child, watched)
                runs.append(_unreported(config, child, watched, wall, timeout_s, log_path, None))
                break
            runs.append(_reported(config, child, watched, wall, None))
            if runs[-1].result.trial.get("status") != "ok":
                break
    finally:
        child.kill()  # done, or stopped early: nothing more to wait for
        child.close()
        Path(log_path).unlink(missing_ok=True)
    return runs


def _watch(child: ChildProcess, job: msg.RunTrial | msg.Query, deadline: float | None) -> _Watched:
    """Send ``job`` once the child is Ready; wait for its reply, its death or the deadline,
    polling its RSS high-water mark meanwhile."""
    seen = _Watched()
    while True:
        hwm = child.peak_rss()
        if hwm is not None:
            seen.rss_hwm = max(seen.rss_hwm or 0, hwm)
        wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.perf_counter()))
        try:
            if child.conn.poll(wait):
                message = child.conn.recv()
                if isinstance(message, msg.Ready):
                    seen.cap = message.cap
                    child.send(job)
                    continue
                seen.reply = message
                return seen
        except (EOFError, OSError):
            return seen  # the child closed the pipe without replying: it died
        if not child.is_alive() and not child.conn.poll(0):
            return seen
        if deadline is not None and time.perf_counter() >= deadline:
            seen.timed_out = True
            return seen


def _finish(child: ChildProcess, seen: _Watched) -> None:
    """Let the child exit (killed at once if it timed out), taking a reply it sent as it
    exited; one that has not exited in time counts as timed out."""
    if seen.timed_out:  # at the deadline, not 5 s later: a late result is no result
        child.process.kill()
    # Bounded: a child that hangs while exiting (CUDA teardown, a user thread) must not
    # outlive the timeout; its result, if it sent one, is already in hand.
    child.join(timeout=10 if seen.reply is not None else 5)
    if seen.reply is None and not seen.timed_out and child.conn.poll(0):
        with contextlib.suppress(EOFError, OSError):
            message = child.conn.recv()
            if not isinstance(message, msg.Ready):
                seen.reply = message
    seen.timed_out = seen.timed_out or (seen.reply is None and child.is_alive())
    child.kill()


def _unreported(config, child, seen: _Watched, wall: float, timeout_s, log_path, sweep):
    from bench.failures import interrupted_exit, status_for_exit

    if seen.timed_out:
        status = "failed"
        error = f"timed out after {timeout_s:g} s; trial process killed"
    elif interrupted_exit(child.exitcode):
        raise KeyboardInterrupt  # SIGINT / SIGTERM ended the probe: no result to record
    else:
        status = status_for_exit(child.exitcode)
        error = f"trial process {child.exit_text()} before reporting"
        if status == "oom":
            error += " (counted as out of memory: the kernel OOM killer sends SIGKILL)"
    tail = _log_tail(log_path)
    if tail:
        error += f"; output: {tail[-400:]}"
    return IsolatedRun(
        unreported_trial_result(config, status=status, error=error, sweep=sweep),
        None,
        {"child_rss_hwm_bytes": seen.rss_hwm},
        wall,
        child.exitcode,
        reported=False,
        timed_out=seen.timed_out,
    )


def _reported(config, child, seen: _Watched, wall: float, sweep) -> IsolatedRun:
    reply = seen.reply
    if isinstance(reply, msg.Answer):  # a stack probe's query answers as a trial job would
        reply = reply.value if reply.error is None else msg.TrialError(0, reply.error, False, "")
    if isinstance(reply, msg.Invalid) or (
        isinstance(reply, msg.StartupError) and reply.bench_error
    ):
        raise BenchError(reply.message)  # bad input (the config, the cap): the caller's error
    if isinstance(reply, msg.Interrupted) or (
        isinstance(reply, msg.StartupError) and reply.interrupted
    ):
        raise KeyboardInterrupt  # the probe was interrupted: that is no result either
    stats = dict(getattr(reply, "stats", {}))
    if stats.get("child_rss_hwm_bytes") is None:
        stats["child_rss_hwm_bytes"] = seen.rss_hwm
    if isinstance(reply, msg.TrialDone):
        from bench.trial import TrialResult

        result = TrialResult(trial=reply.trial, steps=reply.steps)
        return IsolatedRun(result, seen.cap, stats, wall, child.exitcode)
    if not isinstance(reply, msg.TrialError | msg.StartupError):
        raise BenchError(f"trial process sent {type(reply).__name__}, not a trial's reply")
    status = "oom" if reply.oom else "failed"
    result = unreported_trial_result(config, status=status, error=reply.error, sweep=sweep)
    stats["traceback"] = reply.traceback
    cap = seen.cap if isinstance(reply, msg.TrialError) else None
    return IsolatedRun(result, cap, stats, wall, child.exitcode)


def _log_tail(path: str, limit: int = 800) -> str:
    try:
        data = Path(path).read_bytes()[-limit:]
    except OSError:
        return ""
    return " ".join(data.decode("utf-8", "replace").split())
