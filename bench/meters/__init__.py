"""Meters wired into every trial (details and citations in each module).

Interface used by bench.trial:

    meters = TrialMeters(device, config)   # torch.device, TrialConfig
    meters.start()          # trial start: reset peaks, take baselines, start the sampler
    meters.window_start()   # after warm-up, device synchronised: the measured window opens
    meters.window_end()     # end of training, device synchronised
    meters.stop()           # stop the sampler (idempotent; also right after OOM / errors)
    meters.fields() -> dict # trial-row columns (None where not measured) + "notes" list

What runs where:

- CUDA device: allocator peaks (memory.CudaMemoryMeter), NVML device/process memory and
  energy (nvml, energy) through one sampler thread, CPU RSS peak.
- CPU (and anything else): CPU RSS peak only. With the kernel's resettable high-water mark
  (Linux) no thread runs at all, so the meters cost nothing while training.

The sampler interval is ``config.meter_interval_ms`` if the config has it, else the
``BENCH_METER_INTERVAL_MS`` environment variable, else 5 ms. ``BENCH_RSS_METHOD=sampler``
forces the polled RSS fallback (for measuring it).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator

from bench.errors import ConfigError
from bench.meters.memory import CudaMemoryMeter, PeriodicSampler, RssMeter

DEFAULT_INTERVAL_MS = 5.0

_ACTIVE: list[TrialMeters] = []

# Every column fields() may return; all None until measured.
FIELDS = (
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "alloc_retries",
    "cuda_ooms",
    "nvml_peak_used_bytes",
    "nvml_process_peak_bytes",
    "nvml_baseline_used_bytes",
    "nvml_baseline_process_bytes",
    "nvml_memory_info",
    "nvml_samples",
    "cpu_peak_rss_bytes",
    "cpu_baseline_rss_bytes",
    "cpu_rss_method",
    "energy_j",
    "energy_method",
    "energy_window_s",
    "meter_interval_ms",
    "window_wall_s",
)


def _interval_ms(config) -> float:
    value = getattr(config, "meter_interval_ms", None)
    if value is None:
        raw = os.environ.get("BENCH_METER_INTERVAL_MS")
        if not raw:
            return DEFAULT_INTERVAL_MS
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):  # a typo must not pass unnoticed
            raise ConfigError(
                f"BENCH_METER_INTERVAL_MS must be milliseconds > 0 (e.g. 5), got {raw!r}"
            )
    if not value > 0:
        value = DEFAULT_INTERVAL_MS
    return float(value)


def _rss_method(chosen: str | None) -> str:
    raw = chosen or os.environ.get("BENCH_RSS_METHOD") or "hwm"
    if raw not in ("hwm", "sampler"):
        raise ConfigError(f"BENCH_RSS_METHOD must be 'hwm' or 'sampler', got {raw!r}")
    return raw


def check_environment() -> None:
    """Raise ConfigError for a bad meter environment variable. A sweep calls this once
    before it starts: otherwise every one of its trials would fail on the same typo."""
    _interval_ms(None)
    _rss_method(None)


class TrialMeters:
    """All meters of one trial, behind the four calls bench.trial makes."""

    def __init__(
        self,
        device,
        config=None,
        *,
        interval_ms: float | None = None,
        rss_method: str | None = None,
    ) -> None:
        import torch

        self.device = torch.device(device)
        self.config = config
        self.interval_ms = float(interval_ms) if interval_ms is not None else _interval_ms(config)
        self.rss = RssMeter(prefer=_rss_method(rss_method))
        self.cuda = CudaMemoryMeter(self.device)
        self.nvml = None  # the pynvml module while initialised
        self.monitor = None  # nvml.NvmlDeviceMonitor
        self.energy = None  # energy.EnergyMeter
        self.sampler: PeriodicSampler | None = None
        self.notes: list[str] = []
        # Wall time of the measured window (perf_counter), everything in it included
        # (flushes, evaluations): an independent check on the step clock's total.
        self._window: list[float] = []
        self._state = "new"  # new -> started -> stopped

    # -- the four calls -------------------------------------------------------------
    def start(self) -> None:
        if self._state != "new":
            return
        self._state = "started"
        _ACTIVE.append(self)
        try:
            self.rss.start()
            if self.rss.note:
                self.notes.append(self.rss.note)
            if self.device.type == "cuda":
                self.cuda.start()  # creates the CUDA context first: NVML's baseline includes it
                self._start_nvml()
            elif self.device.type != "cpu":
                self.notes.append(f"memory: no device memory meter for {self.device.type}")
            probes = []
            if self.monitor is not None:
                probes.append(self.monitor.probe)
            if self.rss.method == "sampler":
                probes.append(self.rss.probe)
            if probes:
                self.sampler = PeriodicSampler(self.interval_ms / 1000.0, probes)
                self.sampler.start()
        except BaseException:
            self.stop()
            raise

    def window_start(self) -> None:
        if self._state != "started" or self._window:
            return
        self._window.append(time.perf_counter())
        if self.energy is not None:
            self.energy.window_start()

    def window_end(self) -> None:
        if self._state != "started" or len(self._window) != 1:
            return
        self._window.append(time.perf_counter())
        if self.energy is not None:
            self.energy.window_end()

    def stop(self) -> None:
        """Stop everything; safe to call twice, before start, and after an OOM."""
        if self._state == "stopped":
            return
        started = self._state == "started"
        self._state = "stopped"
        with contextlib.suppress(ValueError):
            _ACTIVE.remove(self)
        if not started:
            return
        errors: list[BaseException] = []
        for step in (self._stop_sampler, self.cuda.stop, self.rss.stop, self._stop_nvml):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - finish stopping, then report
                errors.append(exc)
        for exc in errors:
            self.notes.append(f"meters: stop failed: {type(exc).__name__}: {exc}"[:200])

    def fields(self) -> dict:
        row: dict = dict.fromkeys(FIELDS)
        notes = list(self.notes)
        row.update(
            peak_allocated_bytes=self.cuda.peak_allocated_bytes,
            peak_reserved_bytes=self.cuda.peak_reserved_bytes,
            alloc_retries=self.cuda.alloc_retries,
            cuda_ooms=self.cuda.cuda_ooms,
            cpu_baseline_rss_bytes=self.rss.baseline_bytes if self.rss.method else None,
            cpu_peak_rss_bytes=self.rss.peak_bytes
            if self.rss.method and self._state == "stopped"
            else None,
            cpu_rss_method=self.rss.method,
            meter_interval_ms=self.interval_ms if self.sampler is not None else None,
            window_wall_s=self._window[1] - self._window[0] if len(self._window) == 2 else None,
        )
        for part in (self.monitor, self.energy):
            if part is not None:
                values = part.fields()
                notes.extend(values.pop("notes"))
                row.update(values)
        row["notes"] = notes
        return row

    # -- exclusion (used by the FLOP counter's fallback pass) ---------------------------
    def pause(self) -> None:
        if self._state != "started":
            return
        self.cuda.pause()
        self.rss.pause()
        if self.monitor is not None:
            self.monitor.pause()

    def resume(self) -> None:
        if self._state != "started":
            return
        if self.cuda.active:
            import torch

            # The paused work's cached blocks would otherwise stay in NVML's view.
            torch.cuda.empty_cache()
        self.cuda.resume()
        self.rss.resume()
        if self.monitor is not None:
            self.monitor.resume()

    # -- internals ------------------------------------------------------------------
    def _start_nvml(self) -> None:
        from bench.meters import nvml as nvml_mod
        from bench.meters.energy import EnergyMeter

        try:
            self.nvml = nvml_mod.load_nvml()
        except nvml_mod.NvmlUnavailable as exc:
            self.notes.append(str(exc))
            return
        try:
            index = self.device.index if self.device.index is not None else _current_cuda_index()
            handle, how = nvml_mod.resolve_handle(self.nvml, index)
        except nvml_mod.NvmlUnavailable as exc:
            self.notes.append(str(exc))
            self._stop_nvml()
            return
        if how == "ordinal":
            self.notes.append("nvml: device matched by ordinal (no UUID match)")
        self.monitor = nvml_mod.NvmlDeviceMonitor(self.nvml, handle)
        self.monitor.take_baseline()
        self.energy = EnergyMeter(self.monitor)
        self.energy.start()

    def _stop_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    def _stop_nvml(self) -> None:
        if self.nvml is not None:
            from bench.meters.nvml import shutdown_nvml

            nvml, self.nvml = self.nvml, None
            shutdown_nvml(nvml)


def _current_cuda_index() -> int:
    import torch

    return torch.cuda.current_device()


@contextlib.contextmanager
def excluded() -> Iterator[None]:
    """Work inside this block does not count towards the active trials' memory peaks.

    For bookkeeping passes that are not training (the FLOP counter's fallback on a model
    copy). Peaks seen before the block are kept; the block's own are dropped.
    """
    active = list(_ACTIVE)
    for meters in active:
        meters.pause()
    try:
        yield
    finally:
        for meters in active:
            meters.resume()


__all__ = ["FIELDS", "TrialMeters", "excluded"]
