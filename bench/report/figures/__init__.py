"""The report's figures: seaborn on matplotlib's Agg backend, each as PNG and SVG.

One row per workload where a figure compares values across configurations (losses and
throughputs of different workloads are not comparable). Each builder returns a Figure,
or None with the reason appended to ``notes`` when the results hold nothing it could
show; ``render`` turns a Figure into PNG and SVG bytes.

- ``axes``: theme, canvas, rendering, axis scales and labels every figure shares.
- ``plot_loss``: loss curves against steps, samples and wall time.
- ``plot_throughput``: samples/s against micro-batch and effective batch.
- ``plot_memory``: peak memory against micro-batch, OOM trials and probe boundaries.
- ``probes``: ``bench oom`` probes read as the memory and OOM figures draw them.
- ``plot_oom``: b* against capacity per precision and optimizer, the planner's (b, k).
- ``plot_steps``: steps and samples to target with the critical-batch fit.
- ``plot_noise``: the gradient noise scale B_simple over training beside the fitted B_crit.
- ``plot_time``: wall time to the target loss against effective batch.
- ``plot_pareto``: throughput against memory with the Pareto front.
- ``families``: configurations alike but for the batch shape (one line each).
"""

from bench.report.figures.axes import (
    MEMORY_SERIES,
    RenderedFigure,
    compact_bytes,
    plain,
    render,
)
from bench.report.figures.plot_loss import loss_curves
from bench.report.figures.plot_memory import memory
from bench.report.figures.plot_noise import noise_scale
from bench.report.figures.plot_oom import oom_boundaries
from bench.report.figures.plot_pareto import pareto
from bench.report.figures.plot_steps import steps_to_target
from bench.report.figures.plot_throughput import throughput
from bench.report.figures.plot_time import time_to_target
from bench.report.figures.probes import load_oom_probes, planner_choices, probe_boundaries

__all__ = [
    "MEMORY_SERIES",
    "RenderedFigure",
    "compact_bytes",
    "load_oom_probes",
    "loss_curves",
    "memory",
    "noise_scale",
    "oom_boundaries",
    "pareto",
    "planner_choices",
    "plain",
    "probe_boundaries",
    "render",
    "steps_to_target",
    "throughput",
    "time_to_target",
]
