"""NVML: the device's own view of memory (CUDA context and other processes included) and power.

``pynvml`` (package ``nvidia-ml-py``) is imported lazily, only for CUDA trials. Anything
that goes wrong (module missing, no driver, a query unsupported on this board or in this
container) becomes :class:`NvmlUnavailable` or a null column plus a one-line note; it never
ends a trial.

Facts about NVML this module relies on (checked against nvml.h docs and the issue threads
cited):

- Device order: NVML enumerates by PCI bus id, CUDA (by default) fastest-first and after
  ``CUDA_VISIBLE_DEVICES`` remapping, so ``cuda:0`` is not NVML index 0 in general. We map
  through the device UUID that both report (torch ``get_device_properties(i).uuid`` ==
  NVML ``nvmlDeviceGetUUID`` minus its ``GPU-``/``MIG-`` prefix).
- ``nvmlDeviceGetComputeRunningProcesses`` reports *host* PIDs: the driver is not aware of
  PID namespaces (NVIDIA/nvidia-docker#179, #1483), so inside a container our ``os.getpid()``
  may never match. We also try the NSpid chain from /proc/self/status; if our process still
  never appears, the per-process columns are null with a note, never a guess.
- ``nvmlDeviceGetMemoryInfo`` v1 ``used`` includes memory the driver reserves on newer
  drivers; the v2 struct reports it separately. We use v2 where available and say which.
- ``nvmlDeviceGetPowerUsage`` is milliwatts; on Ampere and later (except GA100) it is an
  average over the last second, not an instantaneous reading, so integrating it smears
  energy over ~1 s (see bench.meters.energy).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time

# Counter changes observed before the sampler stops reading the energy counter each tick.
ENERGY_CHANGES_WATCHED = 32


class NvmlUnavailable(Exception):
    """NVML cannot be used for this device; the message is the one-line note."""


_FAILED = object()  # an NVML query raised; the reason is kept on the monitor


def load_nvml():
    """Import and initialise pynvml; raise NvmlUnavailable with the reason otherwise.

    Each successful call must be paired with ``shutdown_nvml`` (NVML counts inits).
    """
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        raise NvmlUnavailable("nvml: pynvml not installed (package nvidia-ml-py)") from None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise NvmlUnavailable(f"nvml: init failed: {describe_nvml_error(exc)}") from None
    return nvml


def shutdown_nvml(nvml) -> None:
    with contextlib.suppress(Exception):  # shutting down must never raise
        nvml.nvmlShutdown()


def describe_nvml_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _strip_uuid(uuid: str) -> str:
    uuid = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if uuid.startswith(prefix):
            return uuid[len(prefix) :]
    return uuid


def torch_device_uuid(index: int) -> str | None:
    """The CUDA device's UUID as torch reports it (no prefix), or None."""
    try:
        import torch

        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    except Exception:  # noqa: BLE001
        return None
    return _strip_uuid(str(uuid)) if uuid else None


def visible_device_entry(index: int, env: dict | None = None) -> str | None:
    """Entry ``index`` of CUDA_VISIBLE_DEVICES (an ordinal or a UUID prefix), or None if unset."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    return entries[index] if 0 <= index < len(entries) else None


def resolve_handle(nvml, index: int, *, uuid: str | None = None, env: dict | None = None):
    """NVML handle for torch's ``cuda:index``; returns (handle, how) or raises NvmlUnavailable.

    Order: by UUID (exact, independent of ordering); else via CUDA_VISIBLE_DEVICES (an
    ordinal or UUID prefix there); else the same ordinal, which is right only when CUDA and
    NVML enumerate alike (``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or a single device) and is noted.
    """
    env = os.environ if env is None else env
    uuid = uuid if uuid is not None else torch_device_uuid(index)
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:  # noqa: BLE001
        raise NvmlUnavailable(f"nvml: cannot count devices: {describe_nvml_error(exc)}") from None
    if uuid:
        for prefix in ("GPU-", "MIG-"):
            try:
                return nvml.nvmlDeviceGetHandleByUUID(prefix + uuid), "uuid"
            except Exception:  # noqa: BLE001 - try the next spelling
                pass
        for i in range(count):  # same UUID, spelled differently (case, prefix)
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                if _strip_uuid(_text(nvml.nvmlDeviceGetUUID(handle))) == uuid:
                    return handle, "uuid"
            except Exception:  # noqa: BLE001 - a device we may not query
                continue
    entry = visible_device_entry(index, env)
    if entry is not None:
        if entry.isdigit():
            ordinal = int(entry)
            if ordinal < count:
                return nvml.nvmlDeviceGetHandleByIndex(ordinal), "CUDA_VISIBLE_DEVICES ordinal"
        else:
            wanted = _strip_uuid(entry)
            for i in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                if _strip_uuid(_text(nvml.nvmlDeviceGetUUID(handle))).startswith(wanted):
                    return handle, "CUDA_VISIBLE_DEVICES uuid"
        raise NvmlUnavailable(
            f"nvml: cannot find CUDA_VISIBLE_DEVICES entry {entry!r} among {count} devices"
        )
    if index < count and (count == 1 or env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"):
        return nvml.nvmlDeviceGetHandleByIndex(index), "ordinal"
    raise NvmlUnavailable(f"nvml: cannot map cuda:{index} to an NVML device (no UUID match)")


def own_pids() -> set[int]:
    """This process's PID in every PID namespace visible to us (NSpid), plus getpid()."""
    pids = {os.getpid()}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    pids.update(int(p) for p in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass
    return pids


class PowerIntegral:
    """Trapezoid-rule energy of power samples between open() and close(), accumulated
    online: constant memory however long the window (a list at 200 samples/s would grow
    by ~70 MB an hour). add() comes from the sampler thread, open/close from the trial's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = None
        self.joules = 0.0
        self.samples = 0
        self.is_open = False

    def open(self, t: float, watts: float) -> None:
        with self._lock:
            self._last, self.joules, self.samples, self.is_open = (t, watts), 0.0, 1, True

    def add(self, t: float, watts: float) -> None:
        with self._lock:
            if not self.is_open or self._last is None or t <= self._last[0]:
                return
            t0, w0 = self._last
            self.joules += (t - t0) * (w0 + watts) / 2
            self._last = (t, watts)
            self.samples += 1

    def close(self, t: float, watts: float) -> float:
        self.add(t, watts)
        with self._lock:
            self.is_open = False
            return self.joules


class NvmlDeviceMonitor:
    """Samples one device's used memory, this process's used memory and (optionally) power
    and the energy counter. ``probe`` is called from the sampler thread; the rest from the
    trial thread. Only running maxima and a power list are kept, so memory stays flat."""

    def __init__(self, nvml, handle, *, pids: set[int] | None = None) -> None:
        self.nvml = nvml
        self.handle = handle
        self.pids = pids if pids is not None else own_pids()
        self.notes: list[str] = []
        self.memory_version = "v2"
        self._mem_v2 = getattr(nvml, "nvmlMemory_v2", None)
        self.baseline_used_bytes: int | None = None
        self.baseline_process_bytes: int | None = None
        self.peak_used_bytes: int | None = None
        self.peak_process_bytes: int | None = None
        self.process_seen = False
        self.process_memory_unreported = False
        self.process_query_failed: str | None = None
        self.memory_query_failed: str | None = None
        self.samples = 0
        self.paused = False
        self._lock = threading.Lock()  # peaks vs pause/resume from the trial thread
        self._saved_peaks: tuple[int | None, int | None] | None = None
        # power / energy (switched on by bench.meters.energy)
        self.record_power = False
        self.power = PowerIntegral()  # fed while the energy window is open
        self.power_failed: str | None = None
        self.watch_energy = False
        self._last_energy: int | None = None
        self.energy_change_times: list[float] = []

    # -- single reads ---------------------------------------------------------------
    def used_bytes(self) -> int:
        if self._mem_v2 is not None:
            try:
                return int(
                    self.nvml.nvmlDeviceGetMemoryInfo(self.handle, version=self._mem_v2).used
                )
            except Exception:  # noqa: BLE001 - old driver: no v2 entry point
                self._mem_v2 = None
                self.memory_version = "v1"
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def process_bytes(self) -> int | None:
        """Our process's used memory; None when our PID is not in NVML's list."""
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        total, found = 0, False
        for p in procs:
            if int(p.pid) in self.pids:
                found = True
                used = p.usedGpuMemory
                if used is None:  # NVML_VALUE_NOT_AVAILABLE (WDDM, some MIG setups)
                    self.process_memory_unreported = True
                else:
                    total += int(used)
        return total if found else None

    def power_watts(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0  # mW -> W

    def energy_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    # -- baseline / sampling ----------------------------------------------------------
    def _read_used(self):
        """Device memory in use, or _FAILED (the reason kept in memory_query_failed)."""
        try:
            return self.used_bytes()
        except Exception as exc:  # noqa: BLE001
            self.memory_query_failed = describe_nvml_error(exc)
            return _FAILED

    def _read_own(self):
        """This process's memory (None: not in the list), or _FAILED (reason kept)."""
        try:
            own = self.process_bytes()
        except Exception as exc:  # noqa: BLE001
            self.process_query_failed = describe_nvml_error(exc)
            return _FAILED
        if own is not None:
            self.process_seen = True
        return own

    def take_baseline(self) -> None:
        used = self._read_used()
        if used is not _FAILED:
            self.baseline_used_bytes = used
        own = self._read_own()
        if own is not _FAILED:
            # Not in the list yet = this process holds no memory there yet (0 is measured),
            # unless it never appears at all (then fields() makes the column null).
            self.baseline_process_bytes = own if own is not None else 0

    def pause(self) -> None:
        """Stop counting peaks (bench.meters.excluded); resume() restores the earlier ones."""
        with self._lock:
            self.paused = True
            self._saved_peaks = (self.peak_used_bytes, self.peak_process_bytes)

    def resume(self) -> None:
        with self._lock:
            if self._saved_peaks is not None:
                self.peak_used_bytes, self.peak_process_bytes = self._saved_peaks
            self._saved_peaks = None
            self.paused = False

    def probe(self) -> None:
        """One sample; runs on the sampler thread. Each query is guarded on its own."""
        now = time.perf_counter()
        if self.paused:
            return
        with self._lock:
            if not self.paused:
                self._probe_memory()
        self._probe_power(now)
        self.samples += 1

    def _probe_memory(self) -> None:
        if self.memory_query_failed is None:
            used = self._read_used()
            if used is not _FAILED and (
                self.peak_used_bytes is None or used > self.peak_used_bytes
            ):
                self.peak_used_bytes = used
        if self.process_query_failed is None:
            own = self._read_own()
            measured = own is not None and own is not _FAILED
            if measured and (self.peak_process_bytes is None or own > self.peak_process_bytes):
                self.peak_process_bytes = own

    def _probe_power(self, now: float) -> None:
        if self.record_power and self.power_failed is None:
            try:
                self.power.add(now, self.power_watts())
            except Exception as exc:  # noqa: BLE001
                self.power_failed = describe_nvml_error(exc)
        if self.watch_energy:
            try:
                e = self.energy_mj()
            except Exception:  # noqa: BLE001
                self.watch_energy = False
            else:
                if self._last_energy is not None and e != self._last_energy:
                    self.energy_change_times.append(now)
                    # Enough to estimate the update period: stop spending an NVML call
                    # (and a GIL hand-off) per tick on it.
                    if len(self.energy_change_times) >= ENERGY_CHANGES_WATCHED:
                        self.watch_energy = False
                self._last_energy = e

    def energy_update_period_s(self) -> float | None:
        """Median interval between observed changes of the energy counter, if seen."""
        t = self.energy_change_times
        if len(t) < 3:
            return None
        gaps = sorted(b - a for a, b in zip(t[:-1], t[1:], strict=True))
        return gaps[len(gaps) // 2]

    def fields(self) -> dict:
        notes = []
        used_ok = self.memory_query_failed is None
        if not used_ok:
            notes.append(f"nvml: memory query failed: {self.memory_query_failed}")
        proc_ok = self.process_query_failed is None and self.process_seen
        if self.process_query_failed is not None:
            notes.append(f"nvml: process query failed: {self.process_query_failed}")
        elif not self.process_seen:
            notes.append(
                "nvml: this process never appeared in the device's process list "
                "(PID namespace? NVML reports host PIDs); per-process columns null"
            )
        elif self.process_memory_unreported:
            notes.append("nvml: per-process used memory not reported by this driver/mode")
            proc_ok = False
        return {
            "nvml_peak_used_bytes": self.peak_used_bytes if used_ok else None,
            "nvml_baseline_used_bytes": self.baseline_used_bytes if used_ok else None,
            "nvml_process_peak_bytes": self.peak_process_bytes if proc_ok else None,
            "nvml_baseline_process_bytes": self.baseline_process_bytes if proc_ok else None,
            "nvml_memory_info": self.memory_version if used_ok else None,
            "nvml_samples": self.samples,
            "notes": notes,
        }


def driver_version() -> str | None:
    """The NVIDIA driver version, or None (no NVML / no driver)."""
    try:
        nvml = load_nvml()
    except NvmlUnavailable:
        return None
    try:
        return _text(nvml.nvmlSystemGetDriverVersion())
    except Exception:  # noqa: BLE001
        return None
    finally:
        shutdown_nvml(nvml)
