"""Energy over the measured window, from NVML.

Preferred: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded,
Volta and later): read at ``window_start`` and ``window_end``; the difference is the
board's energy over the window (method "counter"). Zeus' authors found it within 1 % of
integrated power polling (ml-energy/zeus#12), at two NVML calls instead of a thread.

The counter only moves every few to tens of milliseconds (pynvml PR #18 saw ~10 ms), so a
window shorter than a couple of update periods reads coarsely; the sampler watches the
counter to estimate its update period and the trial row says so when the window is short.

Fallback where the counter is unsupported: integrate ``nvmlDeviceGetPowerUsage`` samples
from the sampler thread over the window with the trapezoid rule (method
"power-integral"). On Ampere and later (except GA100) that reading is itself a 1 s moving
average, and A100/H100 boards sample only part of each period (Yang et al., SC'24,
"Accurate and Convenient Energy Measurements for GPUs"), so the integral is approximate
and the row says so.

Both are whole-board numbers: other processes on the same GPU are included.
"""

from __future__ import annotations

import time

from bench.meters.nvml import NvmlDeviceMonitor, describe_nvml_error

# Windows shorter than this many counter update periods get a coarseness note: the
# counter's quantisation error is up to one period's energy at each end.
SHORT_WINDOW_PERIODS = 10


class EnergyMeter:
    """Board energy over window_start..window_end for one NVML device."""

    def __init__(self, monitor: NvmlDeviceMonitor) -> None:
        self.monitor = monitor
        self.method: str | None = None
        self.energy_j: float | None = None
        self.window_s: float | None = None
        self.notes: list[str] = []
        self._t0: float | None = None
        self._e0: int | None = None

    def start(self) -> None:
        """At trial start: pick the method, so the sampler can record power if needed."""
        try:
            self.monitor.energy_mj()
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported on pre-Volta, MIG
            try:
                self.monitor.power_watts()
            except Exception as exc2:  # noqa: BLE001
                self.notes.append(
                    f"energy: neither energy counter ({describe_nvml_error(exc)}) nor power ({describe_nvml_error(exc2)}) readable"
                )
                return
            self.method = "power-integral"
            self.monitor.record_power = True
            self.notes.append(
                f"energy: counter unsupported ({describe_nvml_error(exc)}); integrated power samples "
                "(NVML power is a ~1 s average on recent GPUs: approximate)"
            )
            return
        self.method = "counter"
        self.monitor.watch_energy = True

    def window_start(self) -> None:
        if self.method is None:
            return
        self._t0 = time.perf_counter()
        if self.method == "counter":
            try:
                self._e0 = self.monitor.energy_mj()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        else:
            try:
                self.monitor.power.open(self._t0, self.monitor.power_watts())
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)

    def window_end(self) -> None:
        if self.method is None or self._t0 is None:
            return
        t1 = time.perf_counter()
        self.window_s = t1 - self._t0
        if self.method == "counter":
            if self._e0 is None:
                return
            try:
                e1 = self.monitor.energy_mj()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                return
            if e1 < self._e0:  # driver reload or wrap: the difference means nothing
                self.notes.append("energy: counter went backwards (driver reload?); energy_j null")
                return
            if e1 == self._e0:
                self.notes.append(
                    f"energy: counter did not move over the {self.window_s * 1e3:.1f} ms window; energy_j null"
                )
                return
            self.energy_j = (e1 - self._e0) / 1000.0  # mJ -> J
            period = self.monitor.energy_update_period_s()
            if period is not None and self.window_s < SHORT_WINDOW_PERIODS * period:
                self.notes.append(
                    f"energy: window {self.window_s * 1e3:.0f} ms is under {SHORT_WINDOW_PERIODS}x the "
                    f"counter's update period (~{period * 1e3:.0f} ms): energy_j is coarse"
                )
        else:
            try:
                self.energy_j = self.monitor.power.close(t1, self.monitor.power_watts())
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                return
            if self.window_s < 2.0:
                self.notes.append(
                    f"energy: window {self.window_s:.2f} s is short against NVML's ~1 s power averaging"
                )

    def _fail(self, exc: BaseException) -> None:
        self.notes.append(f"energy: {self.method} read failed: {describe_nvml_error(exc)}")
        self.method = None

    def fields(self) -> dict:
        return {
            "energy_j": self.energy_j,
            "energy_method": self.method if self.energy_j is not None else None,
            "energy_window_s": self.window_s if self.energy_j is not None else None,
            "notes": list(self.notes),
        }
