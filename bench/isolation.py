"""Run one trial in a fresh process, optionally under a memory cap.

Why a fresh process per trial: an OOM leaves the parent's allocator fragmented and its
caches full, so the next trial in the same process would see less memory than a clean
run does (the complaint users have about in-process batch-size finders). Each trial
here runs in a child forked from a *forkserver* that has imported torch and bench but
never run anything: every child starts from the same clean state, and pays ~0.1 s to
start instead of the ~1.5 s a spawned interpreter needs to import torch.

Memory caps (:func:`apply_memory_cap`, called inside the child before the trial):

- **CPU: ``RLIMIT_DATA``**, set to the capacity. Since Linux 4.7 it bounds the
  process's private writable mappings (heap, anonymous ``mmap``, thread stacks), which
  is where torch's CPU allocator (``posix_memalign`` -> ``mmap`` for large blocks) puts
  tensors. An allocation beyond it fails with ENOMEM, which torch raises as a clean
  ``RuntimeError: DefaultCPUAllocator: can't allocate memory`` (recognised by
  :func:`bench.failures.is_oom`), not a segfault. Measured on this machine (torch
  2.13 CPU, cap = baseline + 300 MiB, 10 MiB tensors): RLIMIT_DATA let 290 MiB through
  before failing, RLIMIT_AS only 220 MiB, because the address-space limit also counts
  shared-library mappings and the ``PROT_NONE`` reservations of glibc's malloc arenas
  that never hold data. So RLIMIT_DATA is the tighter, more meaningful cap. The
  capacity *includes* the child's baseline (Python + torch + bench imported, torch's
  thread pool started: its stacks count in VmData), as a machine's RAM would.
- **CUDA: ``torch.cuda.set_per_process_memory_fraction``**, computed against the
  device's real total. The fraction bounds only what the caching allocator reserves;
  the CUDA context (and cuBLAS handles, loaded kernels) lives outside it. To emulate a
  card of ``capacity`` bytes faithfully, the child first creates the context and a
  cuBLAS handle, measures what they take (NVML, this process's used memory), and sets
  the allocator's limit to ``capacity - context``. Both numbers are reported.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError

# Modules the forkserver imports once, so children start with them loaded.
_PRELOAD = [
    "bench.forkserver_init",  # first: no Ctrl-C traceback from the imports below
    "torch",
    "pandas",
    "pyarrow.parquet",
    # What a trial imports lazily on its first run (the optimizer pulls in torch._dynamo,
    # the FLOP counter sympy): ~3-5 s per child otherwise, and, under a cap, memory
    # that would be charged to the probe and could fail an import half-way.
    "torch._dynamo",
    "sympy",
    "torch.utils.flop_counter",
    "bench.config",
    "bench.failures",
    "bench.trial",
    "bench.meters",
    "bench.meters.env",
    "bench.meters.flops",
    "bench.meters.nvml",
    "bench.workloads.seed_mlp",
    "bench.workloads.teacher_mlp",
    "bench.workloads.char_lm",
]
_CTX: multiprocessing.context.BaseContext | None = None
_CTX_LOCK = threading.Lock()

CPU_METHOD = "rlimit-data"
CUDA_METHOD = "cuda-memory-fraction"


@dataclass(frozen=True)
class CapInfo:
    """What :func:`apply_memory_cap` did, for the record and the user."""

    method: str  # CPU_METHOD or CUDA_METHOD
    device: str
    capacity_bytes: int  # what was asked for: the emulated machine's / card's memory
    limit_bytes: int  # what the mechanism enforces (RLIMIT_DATA value / allocator bytes)
    baseline_bytes: int  # CPU: VmData when capped; CUDA: context + cuBLAS, outside the fraction
    total_bytes: int  # the real machine's / device's memory
    fraction: float | None = None  # CUDA only

    def describe(self) -> str:
        from bench.config import format_bytes

        if self.method == CPU_METHOD:
            return (
                f"CPU cap: RLIMIT_DATA = {format_bytes(self.limit_bytes)} on the probe process "
                f"(its baseline with torch loaded: {format_bytes(self.baseline_bytes)}, inside the cap)"
            )
        return (
            f"CUDA cap: allocator limited to {format_bytes(self.limit_bytes)} "
            f"(set_per_process_memory_fraction({self.fraction:.4f}) of {format_bytes(self.total_bytes)}); "
            f"CUDA context + cuBLAS {format_bytes(self.baseline_bytes)} measured, outside that "
            f"fraction, subtracted so the total fits {format_bytes(self.capacity_bytes)}"
        )


# -- inside the child -----------------------------------------------------------------


def _proc_status_bytes(key: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmData, VmRSS, VmHWM ...) in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_memory_bytes() -> int:
    """Physical memory available to this process: MemTotal, or the cgroup limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def _warm_cpu_threads() -> None:
    # Start torch's intra-op thread pool now, so its thread stacks (private writable
    # mappings, counted by RLIMIT_DATA) are part of the measured baseline rather than a
    # surprise during the first forward pass.
    import torch

    a = torch.randn(256, 256)
    (a @ a).sum().item()


def _nvml_used(index: int, *, by_uuid: bool = True) -> tuple[int | None, int | None]:
    """(this process's memory, the whole device's used memory) on ``cuda:index`` per NVML;
    None for what NVML cannot say (no NVML, no permission, our PID not listed as in a
    container). ``by_uuid=False`` finds the device without asking torch (whose device
    query could create this process's CUDA context), via CUDA_VISIBLE_DEVICES or the
    ordinal where that is unambiguous."""
    from bench.meters import nvml as nvml_mod

    try:
        nvml = nvml_mod.load_nvml()
    except nvml_mod.NvmlUnavailable:
        return None, None
    try:
        handle, _how = nvml_mod.resolve_handle(nvml, index, uuid=None if by_uuid else "")
        monitor = nvml_mod.NvmlDeviceMonitor(nvml, handle)  # its single reads, no thread
        device, own = monitor.used_bytes(), monitor.process_bytes()
        if monitor.process_memory_unreported:  # listed, but NVML gives no figure
            own = None
        return own, device
    except Exception:  # noqa: BLE001 - NVML could not say: the caller falls back
        return None, None
    finally:
        nvml_mod.shutdown_nvml(nvml)


def _cuda_context_bytes(index: int, device_used_before: int | None) -> int:
    """What this process holds on ``cuda:index`` outside torch's caching allocator (the
    CUDA context, cuBLAS handles and workspaces, loaded kernels), once those exist.

    Best: NVML's figure for this process. Else the growth of the device's used memory
    since ``device_used_before`` (read before this process touched CUDA), which is ours
    unless another process allocated in between. Last: everything in use on the device,
    an upper bound when other processes share it (the pytest parent, another worker)."""
    import torch

    own, _ = _nvml_used(index)
    if own is None and device_used_before is not None:
        # Read the way the "before" was (not by UUID), so both are the same device; a
        # growth of zero or less means another process freed memory meanwhile: unusable.
        _, device_now = _nvml_used(index, by_uuid=False)
        if device_now is not None and device_now > device_used_before:
            own = device_now - device_used_before
    if own is None:
        free, total = torch.cuda.mem_get_info(index)
        own = total - free
    return max(0, own - torch.cuda.memory_reserved(index))


def apply_memory_cap(cap_bytes: int, device: Any, *, fixed_malloc: bool = True) -> CapInfo:
    """Cap this process's memory at ``cap_bytes`` on ``device`` ("cpu", "cuda", "cuda:1",
    or a torch.device). Call it in a fresh child process, before the trial's work.

    CPU: ``fixed_malloc`` (default) also fixes glibc's mmap threshold and arena count
    (see :func:`_fix_malloc`) so the same trial needs the same memory every time; it
    changes how fast small-tensor CPU code allocates, so a sweep that times CPU trials
    under a cap may pass False.

    Raises BenchError when the cap cannot be honoured: at or below the baseline the
    process already uses, above the real memory, or on a device without a cap method.
    """
    import torch

    from bench.config import format_bytes

    dev = torch.device(device)
    cap_bytes = int(cap_bytes)
    if dev.type == "cpu":
        if fixed_malloc:
            _fix_malloc()
        _warm_cpu_threads()
        baseline = _proc_status_bytes("VmData") or 0
        total = machine_memory_bytes()
        if cap_bytes <= baseline:
            raise BenchError(
                f"capacity {format_bytes(cap_bytes)} is at or below the probe process's baseline "
                f"{format_bytes(baseline)} (Python + torch loaded, RLIMIT_DATA counts it)"
            )
        if cap_bytes > total:
            raise BenchError(
                f"capacity {format_bytes(cap_bytes)} is more than this machine's memory "
                f"{format_bytes(total)}; a cap cannot emulate a larger machine"
            )
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = cap_bytes if hard == resource.RLIM_INFINITY else min(cap_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        return CapInfo(
            method=CPU_METHOD,
            device="cpu",
            capacity_bytes=cap_bytes,
            limit_bytes=limit,
            baseline_bytes=baseline,
            total_bytes=total,
        )
    if dev.type == "cuda":
        # The index without torch.cuda.current_device(), which initialises CUDA: the
        # device's memory is read before this process has a context there.
        index = dev.index if dev.index is not None else 0
        _, device_before = _nvml_used(index, by_uuid=False)
        torch.cuda.set_device(index)
        total = torch.cuda.get_device_properties(index).total_memory
        # Create the context and a cuBLAS handle (a small matmul), so what they take is
        # measured here rather than landing unseen on top of the cap during training.
        a = torch.randn(64, 64, device=dev)
        (a @ a).sum().item()
        del a
        torch.cuda.synchronize(index)
        context = _cuda_context_bytes(index, device_before)
        if cap_bytes <= context:
            raise BenchError(
                f"capacity {format_bytes(cap_bytes)} is at or below the CUDA context's own "
                f"{format_bytes(context)} on {torch.cuda.get_device_name(index)}"
            )
        if cap_bytes > total:
            raise BenchError(
                f"capacity {format_bytes(cap_bytes)} is more than the device's "
                f"{format_bytes(total)}; a cap cannot emulate a larger card"
            )
        limit = cap_bytes - context
        fraction = limit / total
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        torch.cuda.reset_peak_memory_stats(index)
        return CapInfo(
            method=CUDA_METHOD,
            device=f"cuda:{index}",
            capacity_bytes=cap_bytes,
            limit_bytes=limit,
            baseline_bytes=context,
            total_bytes=total,
            fraction=fraction,
        )
    raise BenchError(f"memory caps work on cpu and cuda devices, not {dev.type!r}")


def _fix_malloc() -> bool:
    """Make glibc malloc's memory use a function of the live allocations, not of history.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), so
    after the first steps tensors up to 32 MiB come from the heap, where freed space
    fragments and is not returned: the peak then depends on the order of earlier
    allocations. Measured (teacher-mlp width 256, cap 420 MiB): with the default, b=7678
    ran out of memory while b=8186 fitted under a *smaller* cap; with the threshold fixed
    (setting it disables the dynamic adjustment, mallopt(3)) and one arena, two
    independent searches agreed within 0.5 %. Returns False where glibc is absent."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 128 * 1024)) and bool(mallopt(m_arena_max, 1))


def reapply_cpu_cap(info: CapInfo) -> None:
    """Put back a CPU cap that ``lift_cpu_cap`` lifted (a warm worker between trials):
    the limit only, since malloc settings and threads were set up the first time.
    Raises BenchError when the process has grown to the cap while it was lifted."""
    from bench.config import format_bytes

    used = _proc_status_bytes("VmData") or 0
    if used >= info.limit_bytes:
        raise BenchError(
            f"process data {format_bytes(used)} is at or above the cap {format_bytes(info.limit_bytes)}"
        )
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (info.limit_bytes, hard))


def lift_cpu_cap() -> None:
    """Undo the CPU cap (soft limit back to the hard one), e.g. to send results home."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))


def resolve_device_name(name: str) -> str:
    """'auto' -> 'cuda' or 'cpu', as bench.trial does; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _child_stats(device: str) -> dict:
    """What the child measures about itself after the trial, independent of the meters:
    its RSS high-water mark and, on CUDA, the allocator's lifetime peaks."""
    stats: dict[str, Any] = {"child_rss_hwm_bytes": _proc_status_bytes("VmHWM")}
    if device.startswith("cuda"):
        import torch

        stats["child_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        stats["child_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return stats


def _child(
    conn, config_dict: dict, cap_bytes: int | None, sweep: str | None, log_path: str
) -> None:
    # Output goes to a log file: its tail is the error text if this process dies.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    cap: CapInfo | None = None
    try:
        from bench.config import TrialConfig
        from bench.trial import run_trial

        config = TrialConfig.from_mapping(config_dict)
        device = resolve_device_name(config.device)
        if cap_bytes is not None:
            cap = apply_memory_cap(cap_bytes, device)
        result = run_trial(config, sweep=sweep)
        stats = _child_stats(device)
        if cap is not None and cap.method == CPU_METHOD:
            lift_cpu_cap()  # pickling the result must not fail for lack of memory
        conn.send(("result", result, cap, stats))
    except BenchError as exc:
        conn.send(("bench-error", str(exc), cap, {}))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        from bench.failures import describe, is_oom

        with contextlib.suppress(Exception):
            lift_cpu_cap()
        conn.send(("error", (describe(exc), is_oom(exc), traceback.format_exc()), cap, {}))
    finally:
        conn.close()


# -- in the parent ---------------------------------------------------------------------


def _context() -> multiprocessing.context.BaseContext:
    """The forkserver context (spawn where fork is unavailable), created once."""
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            methods = multiprocessing.get_all_start_methods()
            if "forkserver" in methods:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(list(_PRELOAD))
            else:  # pragma: no cover - not Linux
                ctx = multiprocessing.get_context("spawn")
            _CTX = ctx
        return _CTX


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


def _log_tail(path: str, limit: int = 800) -> str:
    try:
        data = Path(path).read_bytes()[-limit:]
    except OSError:
        return ""
    return " ".join(data.decode("utf-8", "replace").split())


def _exit_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def synthetic_result(config, *, status: str, error: str, sweep: str | None = None):
    """A TrialResult for a trial whose process never reported (killed, timed out)."""
    import datetime as dt
    import json

    import pandas as pd

    from bench import store
    from bench.trial import TrialResult

    row = {
        "trial_key": config.trial_key,
        "sweep": sweep,
        "workload": config.workload,
        "mode": config.mode,
        "samples": config.samples,
        "micro_batch_size": config.batch_size,
        "accumulation_steps": config.accumulation_steps,
        "effective_batch_size": None
        if config.batch_size is None
        else config.batch_size * config.accumulation_steps,
        "normalize": config.normalize,
        "partial_window": config.partial_window,
        "drop_last": config.drop_last,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "scheduler": config.scheduler,
        "precision": config.precision,
        "data_path": config.data_path,
        "seed": config.seed,
        "status": status,
        "error": error,
        "config_json": json.dumps(config.to_dict(), sort_keys=True, default=str),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "schema_version": store.SCHEMA_VERSION,
    }
    steps = pd.DataFrame(columns=list(store.STEP_COLUMNS))
    return TrialResult(trial=row, steps=steps)


def run_isolated(
    config,
    *,
    cap_bytes: int | None = None,
    timeout_s: float | None = None,
    sweep: str | None = None,
) -> IsolatedRun:
    """Run ``config`` (a TrialConfig) with bench.trial.run_trial in a fresh process.

    The child's fate decides the row: a reported result is returned as is; a child that
    died without reporting gets a synthesised row whose status comes from
    :func:`bench.failures.status_for_exit` (SIGKILL, the kernel OOM killer's signal,
    is "oom"); a timeout kills the child and is "failed". A BenchError raised in the
    child (invalid config, impossible cap) is raised here.
    """
    from bench.failures import status_for_exit

    ctx = _context()
    log_fd, log_path = tempfile.mkstemp(prefix="bench-trial-", suffix=".log")
    os.close(log_fd)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(send, config.to_dict(), cap_bytes, sweep, log_path),
        name=f"bench-trial-b{config.batch_size}",
        daemon=True,
    )
    started = time.perf_counter()
    message = None
    timed_out = False
    rss_hwm: int | None = None
    try:
        proc.start()
        send.close()
        deadline = None if timeout_s is None else started + timeout_s
        while True:
            # Poll the child's RSS high-water mark while it runs: it survives as a
            # measurement even if the child is killed before it can report.
            hwm = _proc_status_bytes("VmHWM", proc.pid)
            if hwm is not None:
                rss_hwm = max(rss_hwm or 0, hwm)

            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.perf_counter()))
            try:
                if recv.poll(wait):
                    message = recv.recv()
                    break
            except (EOFError, OSError):
                break  # the child closed the pipe without sending: it died
            if not proc.is_alive() and not recv.poll(0):
                break
            if deadline is not None and time.perf_counter() >= deadline:
                timed_out = message is None
                break
        if timed_out:  # at the deadline, not 5 s later: a late result is no result
            proc.kill()
        # Bounded: a child that hangs while exiting (CUDA teardown, a user thread) must
        # not outlive the timeout; its result, if it sent one, is already in hand.
        proc.join(timeout=10 if message is not None else 5)
        if message is None and not timed_out and recv.poll(0):  # it finished as it exited
            with contextlib.suppress(EOFError, OSError):
                message = recv.recv()
        timed_out = timed_out or (message is None and proc.is_alive())
        if proc.is_alive():
            proc.kill()
            proc.join()
        wall = time.perf_counter() - started
        if message is None:
            tail = _log_tail(log_path)
            if timed_out:
                status = "failed"
                error = f"timed out after {timeout_s:g} s; trial process killed"
            else:
                status = status_for_exit(proc.exitcode)
                error = f"trial process {_exit_text(proc.exitcode)} before reporting"
                if status == "oom":
                    error += " (counted as out of memory: the kernel OOM killer sends SIGKILL)"
            if tail:
                error += f"; output: {tail[-400:]}"
            stats = {"child_rss_hwm_bytes": rss_hwm}
            return IsolatedRun(
                synthetic_result(config, status=status, error=error, sweep=sweep),
                None,
                stats,
                wall,
                proc.exitcode,
                reported=False,
                timed_out=timed_out,
            )
        kind, payload, cap, stats = message
        stats = dict(stats)
        if stats.get("child_rss_hwm_bytes") is None:
            stats["child_rss_hwm_bytes"] = rss_hwm
        if kind == "bench-error":
            raise BenchError(payload)
        if kind == "error":
            text, oom, tb = payload
            result = synthetic_result(
                config, status="oom" if oom else "failed", error=text, sweep=sweep
            )
            stats["traceback"] = tb
            return IsolatedRun(result, cap, stats, wall, proc.exitcode)
        return IsolatedRun(payload, cap, stats, wall, proc.exitcode)
    finally:
        if proc.is_alive():  # interrupted (KeyboardInterrupt): do not leave it running
            proc.kill()
            proc.join()
        recv.close()
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


def _probe_baseline(device: str, conn) -> None:
    try:
        import torch

        info: dict[str, Any] = {
            "device": device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        }
        if device.startswith("cuda"):
            dev = torch.device(device)
            index = dev.index if dev.index is not None else 0
            _, device_before = _nvml_used(index, by_uuid=False)
            torch.cuda.set_device(index)
            props = torch.cuda.get_device_properties(index)
            info["total_bytes"] = int(props.total_memory)
            info["name"] = props.name
            a = torch.randn(64, 64, device=dev)
            (a @ a).sum().item()
            torch.cuda.synchronize(index)
            info["baseline_bytes"] = _cuda_context_bytes(index, device_before)
        else:
            _warm_cpu_threads()
            info["total_bytes"] = machine_memory_bytes()
            info["name"] = "cpu"
            info["baseline_bytes"] = _proc_status_bytes("VmData")
            info["baseline_rss_bytes"] = _proc_status_bytes("VmRSS")
        conn.send(info)
    finally:
        conn.close()


def _ask_child(target, args: tuple, what: str, timeout_s: float = 300.0):
    """Run ``target(*args, conn)`` in a fresh child and return what it sends. A child
    that dies or hangs (CUDA initialisation, say) is a BenchError naming ``what``."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, send), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            proc.kill()
            raise BenchError(f"could not {what}: the child process hung for {timeout_s:g} s")
        try:
            return recv.recv()
        except EOFError:
            proc.join(5)  # reaped first, so the message says how it ended
            raise BenchError(f"could not {what}: child {_exit_text(proc.exitcode)}") from None
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()


def measure_baseline(device: str = "auto") -> dict:
    """Memory of an idle child with torch loaded: ``total_bytes`` (machine / card),
    ``baseline_bytes`` (CPU: VmData, what RLIMIT_DATA counts; CUDA: the context),
    measured in a child so the caller never creates a CUDA context of its own."""
    proc_device = None if device == "auto" else device
    info = _ask_child(_baseline_entry, (proc_device,), "measure the memory baseline")
    return info


def _baseline_entry(device: str | None, conn) -> None:
    _probe_baseline(device or resolve_device_name("auto"), conn)


def _inspect_entry(config_dict: dict, conn) -> None:
    try:
        from bench.config import TrialConfig
        from bench.trial import prepare

        config = TrialConfig.from_mapping(config_dict)
        workload, _plan, device = prepare(config)
        conn.send(("ok", (workload.n_train, str(device))))
    except BenchError as exc:
        conn.send(("bench-error", str(exc)))
    except BaseException as exc:  # noqa: BLE001
        from bench.failures import describe

        conn.send(("error", describe(exc)))
    finally:
        conn.close()


def inspect_config(config) -> tuple[int, str]:
    """(training-set size, resolved device) of a TrialConfig, found in a child process:
    the workload is built there, so every input error surfaces (as a BenchError) before
    any probe, and the caller neither imports torch nor creates a CUDA context."""
    kind, payload = _ask_child(
        _inspect_entry, (config.to_dict(),), f"build workload {config.workload!r}"
    )
    if kind == "bench-error":
        raise BenchError(payload)
    if kind == "error":
        raise BenchError(f"workload {config.workload!r} cannot be built: {payload}")
    n_train, device = payload
    return int(n_train), device
