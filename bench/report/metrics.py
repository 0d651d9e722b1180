"""The metrics report and compare know: trials-table column, direction, how to print.

Direction matters for a verdict: more samples/s is better, more milliseconds per step,
bytes or loss is worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.config import format_bytes
from bench.errors import BenchError, did_you_mean


@dataclass(frozen=True)
class Metric:
    name: str  # trials column (``peak_memory_bytes``: the memory a trial adds, see prepare)
    higher_is_better: bool
    unit: str  # "" / "bytes" / "s" / "ms" ...
    title: str
    per_step: str | None = None  # how to read per-step samples from the steps table

    def format(self, v: float | None) -> str:
        return format_value(v, self.unit)


def format_value(v: object, unit: str = "") -> str:
    try:
        v = float(v)  # numpy scalars, pandas NA, None alike
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if unit == "bytes":
        return format_bytes(v)
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3g}" if a < 10 else f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("samples_per_s", True, "1/s", "samples/s", per_step="samples_per_s"),
        Metric("tokens_per_s", True, "1/s", "tokens/s"),
        Metric("steps_per_s", True, "1/s", "steps/s", per_step="steps_per_s"),
        Metric("step_time_ms_median", False, "ms", "step time (ms)", per_step="step_time_ms"),
        Metric("train_time_s", False, "s", "train time (s)"),
        Metric("peak_memory_bytes", False, "bytes", "peak memory added"),
        Metric("peak_allocated_bytes", False, "bytes", "peak allocated"),
        Metric("peak_reserved_bytes", False, "bytes", "peak reserved"),
        Metric("nvml_peak_used_bytes", False, "bytes", "NVML peak used"),
        Metric("nvml_process_peak_bytes", False, "bytes", "NVML process peak"),
        Metric("cpu_peak_rss_bytes", False, "bytes", "CPU peak RSS"),
        Metric("final_loss", False, "", "final loss"),
        Metric("tail_loss", False, "", "tail loss"),
        Metric("best_val_loss", False, "", "best val loss"),
        Metric("energy_j", False, "J", "energy (J)"),
        Metric("mfu", True, "", "MFU"),
    )
}

DEFAULT_COMPARE_METRICS = (
    "samples_per_s",
    "step_time_ms_median",
    "peak_memory_bytes",
    "tail_loss",  # not final_loss: at small batches that is one step's noise
)


def parse_metrics(values: list[str] | None) -> list[Metric]:
    """``--metrics a,b c`` -> Metric list; unknown name -> BenchError with a suggestion."""
    if not values:
        return [METRICS[n] for n in DEFAULT_COMPARE_METRICS]
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise BenchError("--metrics: no metric named")
    out = []
    for n in names:
        if n not in METRICS:
            raise BenchError(
                f"unknown metric {n!r}{did_you_mean(n, METRICS)}; expected one of: {', '.join(METRICS)}"
            )
        if METRICS[n] not in out:
            out.append(METRICS[n])
    return out
