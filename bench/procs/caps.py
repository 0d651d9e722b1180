"""Memory caps for a child process, and the baseline they are measured against.

Called inside the child, before the trial's work (:func:`apply_memory_cap`):

- **CPU: ``RLIMIT_DATA``**, set to the capacity. Since Linux 4.7 it bounds the
  process's private writable mappings (heap, anonymous ``mmap``, thread stacks), which
  is where torch's CPU allocator (``posix_memalign`` -> ``mmap`` for large blocks) puts
  tensors. An allocation beyond it fails with ENOMEM, which torch raises as a clean
  ``RuntimeError: DefaultCPUAllocator: can't allocate memory`` (recognised by
  :func:`bench.failures.is_oom`), not a segfault. Measured (torch 2.13 CPU, cap =
  baseline + 300 MiB, 10 MiB tensors): RLIMIT_DATA let 290 MiB through before failing,
  RLIMIT_AS only 220 MiB, because the address-space limit also counts shared-library
  mappings and the ``PROT_NONE`` reservations of glibc's malloc arenas that never hold
  data. So RLIMIT_DATA is the tighter, more meaningful cap. The capacity *includes* the
  child's baseline (Python + torch + bench imported, torch's thread pool started: its
  stacks count in VmData), as a machine's RAM would.
- **CUDA: ``torch.cuda.set_per_process_memory_fraction``**, computed against the
  device's real total. The fraction bounds only what the caching allocator reserves;
  the CUDA context (and cuBLAS handles, loaded kernels) lives outside it. To emulate a
  card of ``capacity`` bytes faithfully, the child first creates the context and a
  cuBLAS handle, measures what they take (NVML, this process's used memory), and sets
  the allocator's limit to ``capacity - context``. Both numbers are reported.

A warm worker lifts a CPU cap to send its result home and puts it back before the next
trial (:func:`lift_cpu_cap`, :func:`reapply_cpu_cap`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.procs.kernel import proc_status_bytes

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


def resolve_device_name(name: str) -> str:
    """'auto' -> 'cuda' or 'cpu', as bench.trial does; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def warm_cpu_threads() -> None:
    """Start torch's intra-op thread pool now, so its thread stacks (private writable
    mappings, counted by RLIMIT_DATA) are part of the measured baseline rather than a
    surprise during the first forward pass."""
    import torch

    a = torch.randn(256, 256)
    (a @ a).sum().item()


def nvml_used(index: int, *, by_uuid: bool = True) -> tuple[int | None, int | None]:
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


def cuda_context_bytes(index: int, device_used_before: int | None) -> int:
    """What this process holds on ``cuda:index`` outside torch's caching allocator (the
    CUDA context, cuBLAS handles and workspaces, loaded kernels), once those exist.

    Best: NVML's figure for this process. Else the growth of the device's used memory
    since ``device_used_before`` (read before this process touched CUDA), which is ours
    unless another process allocated in between. Last: everything in use on the device,
    an upper bound when other processes share it (the pytest parent, another worker)."""
    import torch

    own, _ = nvml_used(index)
    if own is None and device_used_before is not None:
        # Read the way the "before" was (not by UUID), so both are the same device; a
        # growth of zero or less means another process freed memory meanwhile: unusable.
        _, device_now = nvml_used(index, by_uuid=False)
        if device_now is not None and device_now > device_used_before:
            own = device_now - device_used_before
    if own is None:
        free, total = torch.cuda.mem_get_info(index)
        own = total - free
    return max(0, own - torch.cuda.memory_reserved(index))


def _start_cuda(index: int) -> tuple[int, Any]:
    """Create this process's CUDA context and a cuBLAS handle on ``cuda:index`` (a small
    matmul), so what they take is measured now rather than landing unseen on top of a
    cap during training. Returns (what they take, per :func:`cuda_context_bytes`; the
    device's properties)."""
    import torch

    # The device's memory is read before this process has a context there.
    _, device_before = nvml_used(index, by_uuid=False)
    torch.cuda.set_device(index)
    props = torch.cuda.get_device_properties(index)
    a = torch.randn(64, 64, device=torch.device("cuda", index))
    (a @ a).sum().item()
    del a
    torch.cuda.synchronize(index)
    return cuda_context_bytes(index, device_before), props


def apply_memory_cap(
    cap_bytes: int,
    device: Any,
    *,
    fixed_malloc: bool = True,
    reference_baseline: int | None = None,
    sample_peak: bool = True,
) -> CapInfo:
    """Cap this process's memory at ``cap_bytes`` on ``device`` ("cpu", "cuda", "cuda:1",
    or a torch.device). Call it in a fresh child process, before the trial's work.

    CPU: ``fixed_malloc`` (default) also fixes glibc's mmap threshold and arena count
    (see :func:`_fix_malloc`) so the same trial needs the same memory every time; it
    changes how fast small-tensor CPU code allocates, so a sweep that times CPU trials
    under a cap may pass False.

    ``sample_peak`` (CPU): sample VmData, the capped quantity, for its peak
    (:func:`start_vmdata_sampler`). ``reference_baseline`` (CPU): the capacity is that baseline plus a training budget,
    and this process gets the same budget above its own baseline (``bench run
    --memory-cap``: its baseline is not the probe process's, see docs/notes/oom.md).

    Raises BenchError when the cap cannot be honoured: at or below the baseline the
    process already uses, above the real memory, or on a device without a cap method.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return _cap_cpu(
            int(cap_bytes),
            fixed_malloc=fixed_malloc,
            reference=reference_baseline,
            sample_peak=sample_peak,
        )
    if dev.type == "cuda":
        # The index without torch.cuda.current_device(), which initialises CUDA.
        return _cap_cuda(int(cap_bytes), dev.index if dev.index is not None else 0)
    raise BenchError(f"memory caps work on cpu and cuda devices, not {dev.type!r}")


def _cap_cpu(
    cap_bytes: int, *, fixed_malloc: bool, reference: int | None = None, sample_peak: bool = True
) -> CapInfo:
    from bench.config import format_bytes

    if fixed_malloc:
        _fix_malloc()
        _system_arrow_pool()
    warm_cpu_threads()
    if sample_peak:
        start_vmdata_sampler()  # before the baseline: its thread's stack is part of it
    _settle_heap()
    baseline = proc_status_bytes("VmData") or 0
    total = machine_memory_bytes()
    if reference is not None:
        if cap_bytes <= reference:
            raise BenchError(
                f"capacity {format_bytes(cap_bytes)} is at or below the reference baseline "
                f"{format_bytes(reference)}: no training budget is left"
            )
        cap_bytes = baseline + (cap_bytes - reference)
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


def _cap_cuda(cap_bytes: int, index: int) -> CapInfo:
    import torch

    from bench.config import format_bytes

    context, props = _start_cuda(index)
    total = props.total_memory
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


def _settle_heap() -> None:
    """Collect garbage and give the heap's free top back (malloc_trim) before the
    baseline is read: free heap left by imports would otherwise serve the first
    allocations of training without growing VmData, a budget that differs between a
    probe child and a fresh process with other imports."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


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


def _system_arrow_pool() -> None:
    """pyarrow allocates through malloc, not its default jemalloc pool. jemalloc keeps
    what it freed and starts a background thread with a malloc arena of its own: after
    a trial has built its records about 135 MiB of VmData stays held (teacher-mlp,
    measured), which a second job in the same process (an OOM ladder) would carry into
    its peak, and a user's training process, which has no arrow, never holds."""
    with contextlib.suppress(ImportError):
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


# The sampled VmData high-water mark (see start_vmdata_sampler); None: not sampling.
_VMDATA_PEAK: list[int] = []


def start_vmdata_sampler(interval_s: float = 0.001) -> None:
    """Sample this process's VmData every ``interval_s`` from a daemon thread, keeping
    the maximum (:func:`vmdata_peak`). RLIMIT_DATA counts VmData, for which the kernel
    keeps no high-water mark (VmHWM is RSS, VmPeak the whole address space), so a
    peak on the capped quantity has to be sampled; a spike shorter than the interval
    (or than a GIL hand-over, 5 ms, while Python code runs) can be missed, so it is a
    lower bound. Started once per process; its 256 KiB stack is counted in VmData."""
    import threading

    if _VMDATA_PEAK:
        return
    _VMDATA_PEAK.append(proc_status_bytes("VmData") or 0)

    def sample() -> None:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        while True:
            data = os.pread(fd, 4096, 0)  # a /proc read at offset 0 is a fresh snapshot
            at = data.find(b"VmData:")
            if at >= 0:
                kib = int(data[at + 7 : data.index(b"kB", at)])
                _VMDATA_PEAK[0] = max(_VMDATA_PEAK[0], kib * 1024)
            time.sleep(interval_s)

    old = threading.stack_size(256 * 1024)
    try:
        threading.Thread(target=sample, name="bench-vmdata-peak", daemon=True).start()
    finally:
        threading.stack_size(old)


def vmdata_peak(*, reset: bool = False) -> int | None:
    """The sampled VmData high-water mark since the sampler started or the last reset
    (None when no cap started it); ``reset`` starts a new window at the current VmData."""
    if not _VMDATA_PEAK:
        return None
    peak = _VMDATA_PEAK[0]
    if reset:
        _VMDATA_PEAK[0] = proc_status_bytes("VmData") or 0
    return peak


def reapply_cpu_cap(info: CapInfo) -> None:
    """Put back a CPU cap that ``lift_cpu_cap`` lifted (a warm worker between trials):
    the limit only, since malloc settings and threads were set up the first time.
    Raises BenchError when the process has grown to the cap while it was lifted."""
    from bench.config import format_bytes

    used = proc_status_bytes("VmData") or 0
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


def baseline_info(device: str) -> dict:
    """What a cap on ``device`` counts before any work, measured in this (idle) process:
    ``total_bytes`` (machine / card), ``baseline_bytes`` (CPU: VmData, what RLIMIT_DATA
    counts; CUDA: the context), plus the software identity."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if device.startswith("cuda"):
        dev = torch.device(device)
        index = dev.index if dev.index is not None else 0
        info["baseline_bytes"], props = _start_cuda(index)
        info["total_bytes"] = int(props.total_memory)
        info["name"] = props.name
    else:
        warm_cpu_threads()
        info["total_bytes"] = machine_memory_bytes()
        info["name"] = "cpu"
        info["baseline_bytes"] = proc_status_bytes("VmData")
        info["baseline_rss_bytes"] = proc_status_bytes("VmRSS")
    return info
