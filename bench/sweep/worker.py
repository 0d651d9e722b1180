"""The worker process: stays warm, runs one trial at a time, reports over a pipe.

It never touches the Optuna storage or the results folder's trial files: the
coordinator (its parent) claims, records and writes. So a worker that outlives its
coordinator can do no harm, and it does not outlive it for long (a watchdog thread).

Top-level imports are light on purpose: the environment (CUDA_VISIBLE_DEVICES, thread
counts) must be set before torch initialises a device.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any


def _die_with_parent(coordinator_pid: int) -> None:
    # Linux: SIGKILL this process when its parent (the forkserver, which exits with the
    # coordinator) dies; and, in case the parent is something longer-lived, watch the
    # coordinator's pid ourselves.
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


def _reset_peak_rss() -> None:
    """Reset VmHWM so the next reading is this trial's peak (Linux >= 4.0, clear_refs 5)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _warm_up(device: str) -> None:
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


def worker_main(
    conn: Any,
    *,
    env: dict[str, str],
    threads: int | None,
    cap_bytes: int | None,
    sweep: str,
    results_dir: str,
    log_path: str,
    coordinator_pid: int,
) -> None:
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    _die_with_parent(coordinator_pid)
    try:
        import torch

        from bench.config import TrialConfig
        from bench.errors import BenchError
        from bench.failures import describe, is_oom
        from bench.trial import run_trial

        if threads:
            torch.set_num_threads(threads)
        cap_info = None
        cap_device = None
        if cap_bytes:
            from bench.procs import (
                apply_memory_cap,
                lift_cpu_cap,
                reapply_cpu_cap,
                resolve_device_name,
            )

            cap_device = resolve_device_name(env.get("BENCH_SWEEP_DEVICE", "auto"))
        # On CUDA the cap goes on before the warm-up: it measures the CUDA context as the
        # device's growth since before this process had one, and the warm-up creates it.
        # On CPU after: the warm-up's lazy imports must not count against RLIMIT_DATA.
        cap_first = bool(cap_bytes) and cap_device.startswith("cuda")
        if cap_first:
            cap_info = apply_memory_cap(cap_bytes, cap_device)
        _warm_up(env.get("BENCH_SWEEP_DEVICE", "auto"))
        if cap_bytes and not cap_first:
            cap_info = apply_memory_cap(cap_bytes, cap_device)
        _reset_peak_rss()  # from here on VmHWM is the next trial's peak (the parent polls it)
        conn.send(("ready", os.getpid(), None if cap_info is None else cap_info.describe()))
    except BaseException as exc:  # noqa: BLE001 - the parent must learn why
        with contextlib.suppress(Exception):
            conn.send(("startup-error", os.getpid(), f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job_id, config_dict = message
        result = None
        try:
            config = TrialConfig.from_mapping(config_dict)
            result = run_trial(config, sweep=sweep, results_dir=results_dir)
            reply = ("result", job_id, result.trial, result.steps)
        except BenchError as exc:
            reply = ("invalid", job_id, str(exc))
        except BaseException as exc:  # noqa: BLE001 - recorded as the trial's failure
            reply = ("error", job_id, describe(exc), is_oom(exc), traceback.format_exc()[-2000:])
        # Reset before replying: the coordinator reads the high-water mark as soon as it
        # sends the next job, so no trial may inherit this one's peak.
        _reset_peak_rss()
        # Every reply ends with `retire`: None, or why this worker must not take another
        # trial. It is decided before the reply goes, so the coordinator never sends a
        # job to a worker that is about to exit.
        retire = None
        capped = cap_info is not None and cap_device == "cpu"
        if capped:
            try:
                # The limit only (a setrlimit): the malloc settings and thread pool from
                # apply_memory_cap are still in place; it fails when this process has
                # grown to the cap (memory the trial kept), and then the worker retires.
                reapply_cpu_cap(cap_info)
            except BenchError as exc:
                lift_cpu_cap()
                retire = f"its memory cap cannot be put back: {exc}"
        try:
            try:
                conn.send(reply + (retire,))
            except MemoryError:
                # Pickling the result under the cap ran out (nothing was written yet: the
                # message is pickled whole before the first byte goes). Send it uncapped,
                # and retire: this process is too close to its cap for another trial.
                lift_cpu_cap()
                retire = retire or "its result did not fit in the memory cap to be sent"
                conn.send(reply + (retire,))
        except (BrokenPipeError, OSError):
            return
        del reply, result
        if retire:
            return  # the coordinator starts a fresh worker in its place
