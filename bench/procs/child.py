"""The one child loop: set up, say Ready, run jobs until told to stop (or ``max_jobs``).

A sweep's warm worker runs it with a warm-up and no job limit; an oom probe is the same
loop with ``max_jobs=1`` in a fresh process; a query (the memory baseline, a workload's
size) is one :class:`~bench.procs.messages.Query` job. The child never touches the
results folder or the Optuna storage: the parent records, so a child that outlives its
parent can do no harm, and a watched one does not outlive it for long.

Top-level imports are light on purpose: the environment (CUDA_VISIBLE_DEVICES, thread
counts) must be set before torch initialises a device.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from bench.procs import messages as msg
from bench.procs.kernel import proc_status_bytes, reset_peak_rss


@dataclass(frozen=True)
class ChildSetup:
    """How a child sets itself up before its first job."""

    log_path: str | None = None  # stdout and stderr go here: its tail explains a death
    env: dict[str, str] = field(default_factory=dict)  # set before torch touches a device
    threads: int | None = None  # torch intra-op threads
    device: str = "auto"  # what the cap, the warm-up and the stats apply to
    cap_bytes: int | None = None  # bench.procs.caps.apply_memory_cap
    warm_up: bool = False  # a throwaway trial first, so one-off costs leave the numbers
    watch_pid: int | None = None  # exit when this process (the coordinator) dies
    max_jobs: int | None = None  # None: until Stop or the pipe closes
    sweep: str | None = None  # passed to run_trial
    results_dir: str | None = None  # passed to run_trial
    # CPU cap: sample VmData for each job's peak. None: a one-shot child (an oom probe)
    # does, a sweep's warm worker does not (its timed trials share no CPU with a sampler).
    sample_peak: bool | None = None


def child_main(conn: Any, setup: ChildSetup) -> None:
    """The child process's entry point (the target of :class:`~bench.procs.ChildProcess`)."""
    os.environ.update(setup.env)
    if setup.log_path is not None:
        _redirect_output(setup.log_path)
    if setup.watch_pid is not None:
        die_with_parent(setup.watch_pid)
    try:
        cap = _start(conn, setup)
        done = 0
        while setup.max_jobs is None or done < setup.max_jobs:
            try:
                job = conn.recv()
            except (EOFError, OSError, KeyboardInterrupt):
                return  # an idle child has nothing to give back: its parent starts another
            if not isinstance(job, msg.RunTrial | msg.Query):
                return  # Stop
            done += 1
            last = setup.max_jobs is not None and done >= setup.max_jobs
            if not _serve(conn, job, setup, cap, last=last):
                return
    finally:
        conn.close()


def _redirect_output(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Line-buffered, so the log's tail is current when the process is killed.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def die_with_parent(coordinator_pid: int) -> None:
    """Linux: SIGKILL this process when its parent (the forkserver, which exits with the
    coordinator) dies; and, in case the parent is something longer-lived, watch the
    coordinator's pid from a thread and exit when it is gone."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(coordinator_pid, 0)
            except ProcessLookupError:
                os._exit(137)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="bench-coordinator-watch", daemon=True).start()


def _start(conn: Any, setup: ChildSetup) -> Any:
    """Threads, memory cap, warm-up; then Ready (or StartupError and exit 1). Returns the
    CapInfo in force, or None."""
    try:
        from bench.procs.caps import apply_memory_cap, resolve_device_name

        if setup.threads:
            import torch

            torch.set_num_threads(setup.threads)
        cap = None
        device = resolve_device_name(setup.device) if setup.cap_bytes else setup.device
        # On CUDA the cap goes on before the warm-up: it measures the CUDA context as the
        # device's growth since before this process had one, and the warm-up creates it.
        # On CPU after: the warm-up's lazy imports must not count against RLIMIT_DATA.
        cap_first = bool(setup.cap_bytes) and device.startswith("cuda")
        if cap_first:
            cap = apply_memory_cap(setup.cap_bytes, device)
        if setup.warm_up:
            warm_up(setup.device)
        if setup.cap_bytes and not cap_first:
            sample = setup.sample_peak if setup.sample_peak is not None else setup.max_jobs == 1
            cap = apply_memory_cap(setup.cap_bytes, device, sample_peak=sample)
        if setup.warm_up:
            reset_peak_rss()  # the warm-up's peak is not the first trial's
        conn.send(msg.Ready(pid=os.getpid(), cap=cap))
        return cap
    except BaseException as exc:  # noqa: BLE001 - the parent must learn why
        with contextlib.suppress(Exception):
            conn.send(_startup_error(exc))
        raise SystemExit(1) from None


def _startup_error(exc: BaseException) -> msg.StartupError:
    from bench.errors import BenchError
    from bench.failures import describe, is_oom

    return msg.StartupError(
        pid=os.getpid(),
        error=describe(exc),
        message=str(exc),
        bench_error=isinstance(exc, BenchError),
        oom=is_oom(exc),
        traceback=traceback.format_exc(),
        interrupted=isinstance(exc, KeyboardInterrupt),
    )


def warm_up(device: str) -> None:
    """Run a throwaway two-step trial, so that one-off costs (lazy imports, the thread
    pool, autograd and FLOP-counter first use, the environment fingerprint, a CUDA
    context) are paid at worker start, not inside the first real trial's numbers."""
    from bench.config import TrialConfig
    from bench.trial import run_trial

    with contextlib.suppress(Exception):  # a warm-up failure must not stop the worker
        config = TrialConfig(
            workload="seed-mlp",
            workload_options={"val_samples": 8},
            samples=16,
            batch_size=8,
            epochs=1,
            max_steps=2,
            timing_warmup_steps=0,
            device=device,
        )
        run_trial(config)


def _serve(conn: Any, job: Any, setup: ChildSetup, cap: Any, *, last: bool) -> bool:
    """Run one job and send its reply; False when this child must exit now."""
    reply = _run(job, setup)
    if not last:
        # Reset before replying: the parent reads the high-water mark as soon as it
        # sends the next job, so no trial may inherit this one's peak.
        reset_peak_rss()
    # Decided before the reply goes, so the parent never sends a job to a child that is
    # about to exit.
    retire = _restore_cap(cap, last=last) or reply.retire
    reply = dataclasses.replace(reply, retire=retire)
    try:
        try:
            conn.send(reply)
        except MemoryError:
            # Pickling the result under the cap ran out (nothing was written yet: the
            # message is pickled whole before the first byte goes). Send it uncapped,
            # and retire: this process is too close to its cap for another trial.
            from bench.procs.caps import lift_cpu_cap

            lift_cpu_cap()
            retire = retire or "its result did not fit in the memory cap to be sent"
            conn.send(dataclasses.replace(reply, retire=retire))
    except (BrokenPipeError, OSError):
        return False
    return not retire


def _run(job: Any, setup: ChildSetup) -> msg.Reply:
    from bench.errors import BenchError
    from bench.failures import describe, is_oom

    try:
        if isinstance(job, msg.Query):
            return msg.Answer(job.job_id, value=job.function(*job.args))
        from bench.config import TrialConfig
        from bench.procs.caps import resolve_device_name
        from bench.trial import run_trial

        config = TrialConfig.from_mapping(job.config)
        result = run_trial(config, sweep=setup.sweep, results_dir=setup.results_dir)
        stats = child_stats(resolve_device_name(config.device))
        return msg.TrialDone(job.job_id, result.trial, result.steps, stats)
    except BenchError as exc:
        return msg.Invalid(job.job_id, str(exc))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        if isinstance(job, msg.Query):
            return msg.Answer(job.job_id, error=describe(exc))
        if isinstance(exc, KeyboardInterrupt):
            return msg.Interrupted(job.job_id)  # not the trial's result: it runs again
        return msg.TrialError(job.job_id, describe(exc), is_oom(exc), traceback.format_exc())


def _restore_cap(cap: Any, *, last: bool) -> str | None:
    """After a job, under a CPU cap: lift it for good after the last job (sending the
    result must not fail for lack of memory), else put it back for the next trial.
    Returns why this child must retire, or None."""
    from bench.errors import BenchError
    from bench.procs.caps import CPU_METHOD, lift_cpu_cap, reapply_cpu_cap

    if cap is None or cap.method != CPU_METHOD:
        return None
    if last:
        with contextlib.suppress(Exception):
            lift_cpu_cap()
        return None
    try:
        # The limit only (a setrlimit): the malloc settings and thread pool from
        # apply_memory_cap are still in place; it fails when this process has grown to
        # the cap (memory the trial kept), and then the worker retires.
        reapply_cpu_cap(cap)
    except BenchError as exc:
        lift_cpu_cap()
        return f"its memory cap cannot be put back: {exc}"
    return None


def child_stats(device: str) -> dict:
    """What the child measures about itself after a trial, independent of the meters:
    its RSS high-water mark and, on CUDA, the allocator's lifetime peaks."""
    stats: dict[str, Any] = {"child_rss_hwm_bytes": proc_status_bytes("VmHWM")}
    from bench.procs.caps import vmdata_peak  # sampled under a CPU cap, else None

    stats["vmdata_peak_bytes"] = vmdata_peak(reset=True)
    if device.startswith("cuda"):
        import torch

        stats["child_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        stats["child_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return stats
