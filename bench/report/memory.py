"""The memory a trial adds, per counter, and the smallest difference each can resolve.

A CPU trial's whole-process RSS (~300 MiB of Python, torch and the worker's earlier
trials) says nothing about the trial; its *growth* does: the RSS high-water mark minus
the RSS at the trial's start (``cpu_peak_rss_bytes - cpu_baseline_rss_bytes``). On CUDA
the caching allocator's peaks belong to the trial already (reset at its start); NVML's
growth over its baseline is the second line, as it sees what the allocator does not
(the CUDA context is in the baseline, see bench.meters.memory).

Resolution: a difference between configurations means something only when it is larger
than both

- the *counter's step*: the RSS counter is kept in pages and the kernel batches its
  updates per CPU (up to 32 pages per CPU, bench.meters.memory), and a growth is the
  difference of two readings: 2 x 32 x 4 KiB x CPUs (0.5 MiB on 2 CPUs). The caching
  allocator reserves in 2 MiB segments and rounds blocks to 512 B; NVML counts MiB;
- the *spread across seeds*: per configuration with at least 2 ok seeds the range
  (max - min) of its seeds, and the median of those ranges over the workload's
  configurations. A seed is a repeat of the same configuration, so this is what the same
  measurement gives twice.

Where every configuration of a workload lies within that resolution, the report says so
and draws no line for that counter; the Pareto front treats such differences as ties.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import format_bytes

PAGE_BYTES = 4096
RSS_BATCH_PAGES = 32  # per CPU: the kernel's batching of RSS counter updates

# (trials column, a reader's name, the counter's step in bytes; None: from the CPU count)
COUNTERS = {
    "peak_reserved_bytes": ("allocator reserved peak", 2 * 2**20),
    "peak_allocated_bytes": ("allocator allocated peak", 512),
    "nvml_growth_bytes": ("NVML growth (process, else device)", 2**20),
    "cpu_rss_growth_bytes": ("CPU RSS growth (high-water − start)", None),
    # Rows without cpu_baseline_rss_bytes (older schema versions): the whole process.
    "cpu_peak_rss_bytes": ("CPU RSS of the whole process (no start reading)", None),
}

# The trials columns the growths and the trial's memory figure are made of.
READINGS = (
    "peak_reserved_bytes",
    "peak_allocated_bytes",
    "nvml_process_peak_bytes",
    "nvml_baseline_process_bytes",
    "nvml_peak_used_bytes",
    "nvml_baseline_used_bytes",
    "cpu_peak_rss_bytes",
    "cpu_baseline_rss_bytes",
)

# The one memory figure of a trial in tables, on the Pareto plot and in bench compare
# (``peak_memory_bytes``), first present wins:
# the allocator's reserved peak decides a CUDA OOM; on a CPU trial only RSS exists.
TRIAL_MEMORY_SOURCES = (
    "peak_reserved_bytes",
    "nvml_growth_bytes",
    "peak_allocated_bytes",
    "cpu_rss_growth_bytes",
    "cpu_peak_rss_bytes",
)


def add_growth(trials: pd.DataFrame) -> None:
    """``nvml_growth_bytes``, ``cpu_rss_growth_bytes``, ``trial_memory_bytes`` and
    ``trial_memory_source`` on ``trials``, in place. A growth needs both its readings; a
    negative one (the baseline read after memory was returned) is 0."""
    nvml_proc = _minus(trials, "nvml_process_peak_bytes", "nvml_baseline_process_bytes")
    nvml_used = _minus(trials, "nvml_peak_used_bytes", "nvml_baseline_used_bytes")
    trials["nvml_growth_bytes"] = nvml_proc.where(nvml_proc.notna(), nvml_used)
    trials["cpu_rss_growth_bytes"] = _minus(trials, "cpu_peak_rss_bytes", "cpu_baseline_rss_bytes")
    mem = pd.Series(np.nan, index=trials.index)
    src = pd.Series(None, index=trials.index, dtype=object)
    for c in TRIAL_MEMORY_SOURCES:
        take = mem.isna() & trials[c].notna()
        mem[take] = trials.loc[take, c]
        src[take] = c
    trials["trial_memory_bytes"], trials["trial_memory_source"] = mem, src


def _minus(trials: pd.DataFrame, peak: str, base: str) -> pd.Series:
    if peak not in trials or base not in trials:
        return pd.Series(np.nan, index=trials.index)
    a = pd.to_numeric(trials[peak], errors="coerce").astype(float)
    b = pd.to_numeric(trials[base], errors="coerce").astype(float)
    return (a - b).clip(lower=0)


def cpu_count(folder: Path) -> int | None:
    """The largest ``cpu_count`` of the results' environment records (``env/*.json``)."""
    counts = []
    for path in sorted((folder / "env").glob("*.json")):
        try:
            n = json.loads(path.read_text(encoding="utf-8")).get("cpu_count")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(n, int) and n > 0:
            counts.append(n)
    return max(counts) if counts else None


@dataclass(frozen=True)
class Resolution:
    """The smallest difference of one counter that is more than noise, and why."""

    column: str
    bytes: float  # max(step, spread); 0 when neither is known
    step_bytes: float | None  # the counter's own step
    spread_bytes: float | None  # median seed range; None without repeats
    repeated: int  # configurations with >= 2 ok seeds

    def text(self) -> str:
        """'512.00 KiB (the larger of the counter's step, 512.00 KiB, and the seed-to-seed
        range, 40.00 KiB: median over 6 configurations with ≥ 2 seeds)'."""
        spread = (
            f"the seed-to-seed range, {format_bytes(self.spread_bytes)}: median over "
            f"{self.repeated} configurations with ≥ 2 seeds"
            if self.spread_bytes is not None
            else None
        )
        step = f"the counter's step, {format_bytes(self.step_bytes)}" if self.step_bytes else None
        if spread and step:
            return f"{format_bytes(self.bytes)} (the larger of {step}, and {spread})"
        if step:
            return f"{format_bytes(self.bytes)} ({step}; no configuration has 2 seeds to measure a spread)"
        if spread:
            return f"{format_bytes(self.bytes)} ({spread})"
        return "unknown (no configuration has 2 seeds, and the counter's step is not known)"


def resolution(
    trials: pd.DataFrame, column: str, cpus: int | None, counter: str | None = None
) -> Resolution:
    """``column``'s resolution over ``trials`` (ok trials of one workload); ``counter``
    names the counter whose step applies (default: ``column`` itself)."""
    counter = counter or column
    step = step_bytes(counter, cpus)
    ranges = seed_ranges(trials, column)
    spread = float(np.median(ranges)) if len(ranges) else None
    return Resolution(column, max(step or 0.0, spread or 0.0), step, spread, len(ranges))


def step_bytes(counter: str, cpus: int | None) -> float | None:
    """The smallest change ``counter`` can show (module docstring); None when not known
    (a CPU counter without the CPU count)."""
    if counter == "cpu_rss_growth_bytes":
        return 2 * RSS_BATCH_PAGES * PAGE_BYTES * cpus if cpus else None
    if counter == "cpu_peak_rss_bytes":
        return RSS_BATCH_PAGES * PAGE_BYTES * cpus if cpus else None
    return COUNTERS[counter][1] if counter in COUNTERS else None


def add_steps(trials: pd.DataFrame, cpus: int | None) -> None:
    """``trial_memory_step_bytes`` on ``trials`` (after :func:`add_growth`), in place: the
    step of the counter each trial's memory figure comes from; a CPU counter without the
    CPU count takes one CPU's, the least it can be."""
    trials["trial_memory_step_bytes"] = [
        float(step_bytes(src, cpus or 1) or 0.0) if isinstance(src, str) else np.nan
        for src in trials["trial_memory_source"]
    ]


def seed_ranges(trials: pd.DataFrame, column: str) -> np.ndarray:
    """Per configuration with at least 2 values of ``column``, max - min over its seeds."""
    v = trials[["config_id", column]].dropna()
    g = v.groupby("config_id")[column]
    n = g.count()
    r = (g.max() - g.min())[n >= 2]
    return r.to_numpy(dtype=float)


def resolutions(trials: pd.DataFrame, cpus: int | None) -> dict:
    """Per workload, per counter with values in its ok trials (and ``trial_memory_bytes``,
    measured as its most common source), the Resolution."""
    out: dict = {}
    ok = trials[trials["status"] == "ok"]
    for w, g in ok.groupby("workload", dropna=False, sort=False):
        res = {c: resolution(g, c, cpus) for c in drawn_counters(g)}
        src = g["trial_memory_source"].dropna()
        if len(src):
            main = src.mode().iloc[0]
            res["trial_memory_bytes"] = resolution(g, "trial_memory_bytes", cpus, main)
        out[w] = res
    return out


def drawn_counters(trials: pd.DataFrame) -> list[str]:
    """The counters with values in ``trials``; the whole-process RSS only where no trial
    has its growth (it is the same counter, less its start)."""
    present = [c for c in COUNTERS if trials[c].notna().any()]
    if "cpu_rss_growth_bytes" in present:
        present.remove("cpu_peak_rss_bytes")
    return present


def within(medians: pd.Series, res: Resolution) -> bool:
    """True when there are configurations to tell apart (two or more) and every one's
    median lies within ``res`` of every other's."""
    m = medians.dropna()
    return len(m) > 1 and float(m.max() - m.min()) <= res.bytes
