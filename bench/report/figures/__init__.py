"""The report's figures: seaborn on matplotlib's Agg backend, each as PNG and SVG.

One row per workload where a figure compares values across configurations (losses and
throughputs of different workloads are not comparable). Each builder returns a Figure,
or None with the reason appended to ``notes`` when the results hold nothing it could
show; ``render`` turns a Figure into PNG and SVG bytes.

- ``axes``: theme, canvas, rendering, axis scales and labels every figure shares.
- ``plot_loss``: loss curves against steps, samples and wall time.
- ``plot_throughput``: samples/s against micro-batch and effective batch.
- ``plot_memory``: peak memory against micro-batch, OOM trials and probe boundaries.
- ``probes``: ``bench oom`` probes read as the memory figure draws them.
- ``plot_steps``: steps and samples to target with the critical-batch fit.
- ``plot_pareto``: throughput against peak memory with the Pareto front.
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
from bench.report.figures.plot_pareto import pareto
from bench.report.figures.plot_steps import steps_to_target
from bench.report.figures.plot_throughput import throughput
from bench.report.figures.probes import load_oom_probes, probe_boundaries

__all__ = [
    "MEMORY_SERIES",
    "RenderedFigure",
    "compact_bytes",
    "load_oom_probes",
    "loss_curves",
    "memory",
    "pareto",
    "plain",
    "probe_boundaries",
    "render",
    "steps_to_target",
    "throughput",
]
