"""Memory meters: the CUDA caching allocator's peaks and the process's CPU resident set.

CUDA (torchtitan's memory monitor in spirit): at trial start the allocator's cached blocks
are released and its peak counters reset, so ``peak_allocated_bytes`` (tensors alive at
once) and ``peak_reserved_bytes`` (what the allocator held from the driver) belong to this
trial only. Allocator retries (``num_alloc_retries``: a cudaMalloc failed, the cache was
flushed and the call retried, a sign of fragmentation near the limit) and OOMs
(``num_ooms``) are cumulative in ``torch.cuda.memory_stats``; we report the difference
over the trial rather than resetting them, so nothing else in the process loses them.

CPU RSS: on Linux >= 4.0 writing "5" to ``/proc/self/clear_refs`` resets the kernel's
resident-set high-water mark (``VmHWM`` in ``/proc/self/status``) to the current RSS
(proc(5), "clear_refs"). The kernel raises the mark whenever it unmaps memory (munmap,
madvise(DONTNEED), exit) and reading it also takes the current RSS, so a peak is caught
however short it was, at no cost to us and with no thread. Its only error is the RSS
counter's per-CPU batching (up to 32 pages per CPU: 0.25 MiB on a 2-core machine;
scripts/bench_overhead.py --rss-miss: 8 MiB and larger spikes of a few ms were all caught).
Where that is not available (other systems, restricted /proc), a :class:`PeriodicSampler`
reads the current RSS every few milliseconds; such a sampler misses peaks shorter than
its interval (the same script measures how much).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import threading
from collections.abc import Callable

_PAGE_SIZE = resource.getpagesize()
_RSS_COUNTER_SLACK = 32 * (os.cpu_count() or 1) * _PAGE_SIZE + 4 * _PAGE_SIZE
_STATUS = "/proc/self/status"
_STATM = "/proc/self/statm"
_CLEAR_REFS = "/proc/self/clear_refs"


# -- CPU resident set --------------------------------------------------------------------


def _status_bytes(key: str) -> int | None:
    """A ``kB`` line of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int | None:
    """The process's resident set now (Linux: /proc/self/statm, one read, no parsing loop)."""
    try:
        with open(_STATM, "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def rss_high_water_bytes() -> int | None:
    return _status_bytes("VmHWM:")


def reset_rss_high_water() -> bool:
    """Reset VmHWM to the current RSS; True if the kernel accepted it and it took effect."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = rss_high_water_bytes(), _status_bytes("VmRSS:")
    # Accepted writes of an unknown value are silently ignored by old kernels; check that
    # the mark really came down to (about) the current RSS. "About": VmRSS is read from
    # per-CPU batched counters that may lag the mark by up to 32 pages per CPU (a
    # tighter bound refused a working reset now and then, starting a needless sampler).
    return hwm is not None and rss is not None and hwm <= rss + _RSS_COUNTER_SLACK


class PeriodicSampler:
    """One daemon thread that calls each probe every ``interval_s`` seconds.

    Meters that need polling (NVML memory and power, the RSS fallback) share this single
    thread, so a trial wakes one thread, not one per meter. A probe is a plain callable;
    it must be cheap and must not raise (exceptions are caught and counted so a failing
    probe cannot kill the thread, but each costs a traceback's worth of time).
    Each wake-up needs the GIL; on a busy 2-core machine that competes with the training
    thread, which is why the default interval is milliseconds, not microseconds, and why
    nothing is started when no meter needs it (see docs/notes/meters.md for the cost).
    """

    def __init__(self, interval_s: float, probes: list[Callable[[], None]]) -> None:
        if not interval_s > 0:
            raise ValueError(f"sampler interval must be > 0 seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.probes = list(probes)
        self.ticks = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or not self.probes:
            return
        self.tick()  # one sample now, so even a very short trial has one
        self._thread = threading.Thread(target=self._run, name="bench-meter-sampler", daemon=True)
        self._thread.start()

    def tick(self) -> None:
        for probe in self.probes:
            try:
                probe()
            except Exception:  # noqa: BLE001 - a probe failing must not end sampling
                self.errors += 1
        self.ticks += 1

    def _run(self) -> None:
        wait, tick, stop = self._stop.wait, self.tick, self._stop
        while not wait(self.interval_s):
            tick()
            if stop.is_set():
                break

    def stop(self) -> None:
        """Stop and join (idempotent); takes one last sample so the end is covered."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=max(1.0, 10 * self.interval_s))
        self.tick()

    @property
    def running(self) -> bool:
        return self._thread is not None


class RssMeter:
    """Peak resident set of this process between ``start`` and ``stop``.

    ``method`` is "hwm" (kernel high-water mark: every peak, to counter batching) or "sampler" (polled; give its
    probe to a PeriodicSampler) or None (cannot be measured here: the columns stay null).
    """

    def __init__(self, *, prefer: str = "hwm") -> None:
        if prefer not in ("hwm", "sampler"):
            raise ValueError(f"RssMeter prefer must be 'hwm' or 'sampler', got {prefer!r}")
        self.prefer = prefer
        self.method: str | None = None
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.note: str | None = None
        self._paused_peak: int | None = None

    def start(self) -> None:
        self.baseline_bytes = current_rss_bytes()
        if self.baseline_bytes is None:
            self.method = None
            self.note = f"cpu rss: not measurable on {sys.platform} (no /proc/self/statm)"
            return
        if self.prefer == "hwm" and reset_rss_high_water():
            self.method = "hwm"
        else:
            self.method = "sampler"
            if self.prefer == "hwm":
                self.note = "cpu rss: kernel high-water mark not resettable here; sampled peak may miss short spikes"
        self.peak_bytes = self.baseline_bytes

    def probe(self) -> None:
        """Sampler probe (method "sampler" only)."""
        rss = current_rss_bytes()
        if rss is not None and (self.peak_bytes is None or rss > self.peak_bytes):
            self.peak_bytes = rss

    def _read_peak(self) -> int | None:
        if self.method == "hwm":
            hwm = rss_high_water_bytes()
            return max(hwm, self.peak_bytes or 0) if hwm is not None else self.peak_bytes
        if self.method == "sampler":
            self.probe()
        return self.peak_bytes

    def pause(self) -> None:
        """Exclude what follows from the peak (see TrialMeters.excluded)."""
        if self.method is None:
            return
        self._paused_peak = self._read_peak()

    def resume(self) -> None:
        if self.method is None or self._paused_peak is None:
            return
        if self.method == "hwm":
            reset_rss_high_water()
        self.peak_bytes = max(self._paused_peak, current_rss_bytes() or 0)
        self._paused_peak = None

    def stop(self) -> None:
        if self.method is not None:
            self.peak_bytes = self._read_peak()


# -- CUDA caching allocator ------------------------------------------------------------


class CudaMemoryMeter:
    """Allocator peaks for one CUDA device over a trial (null columns elsewhere)."""

    def __init__(self, device) -> None:
        self.device = device
        self.active = False
        self.peak_allocated_bytes: int | None = None
        self.peak_reserved_bytes: int | None = None
        self.alloc_retries: int | None = None
        self.cuda_ooms: int | None = None
        self._retries0 = 0
        self._ooms0 = 0
        self._paused: tuple[int, int] | None = None
        self._carried = (0, 0)  # peaks seen before a pause/resume reset

    def start(self) -> None:
        import torch

        if self.device.type != "cuda" or not torch.cuda.is_available():
            return
        # The CUDA context first (a synchronize creates it; torch's lazy init does not), so
        # NVML's baseline, taken next, holds it and a trial's NVML growth is the trial's.
        torch.cuda.synchronize(self.device)
        # Free what earlier trials in this process left cached, so the reserved peak and
        # NVML's numbers are this trial's. gc first: unreachable tensors still hold blocks.
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        stats = torch.cuda.memory_stats(self.device)
        self._retries0 = int(stats.get("num_alloc_retries", 0))
        self._ooms0 = int(stats.get("num_ooms", 0))
        self._carried = (0, 0)
        self.active = True

    def _peaks(self) -> tuple[int, int]:
        import torch

        a = int(torch.cuda.max_memory_allocated(self.device))
        r = int(torch.cuda.max_memory_reserved(self.device))
        return max(a, self._carried[0]), max(r, self._carried[1])

    def pause(self) -> None:
        if self.active:
            self._paused = self._peaks()

    def resume(self) -> None:
        import torch

        if not self.active or self._paused is None:
            return
        # What ran while paused (a FLOP-counting pass) must not count: drop its peak, keep
        # everything seen before it.
        torch.cuda.reset_peak_memory_stats(self.device)
        self._carried, self._paused = self._paused, None

    def stop(self) -> None:
        import torch

        if not self.active:
            return
        self.active = False
        # Readable after an OOM too: memory_stats only reads the allocator's counters.
        self.peak_allocated_bytes, self.peak_reserved_bytes = self._peaks()
        stats = torch.cuda.memory_stats(self.device)
        self.alloc_retries = int(stats.get("num_alloc_retries", 0)) - self._retries0
        self.cuda_ooms = int(stats.get("num_ooms", 0)) - self._ooms0


__all__ = [
    "CudaMemoryMeter",
    "PeriodicSampler",
    "RssMeter",
    "current_rss_bytes",
    "reset_rss_high_water",
    "rss_high_water_bytes",
]
