"""What every report figure shares: the theme, the canvas, rendering, axis scales, labels.

Figures are built on ``matplotlib.figure.Figure`` objects (no pyplot global state), so
rendering is thread-safe and nothing leaks between figures.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_WORKLOAD_ROWS = 4
ROW_HEIGHT = 3.3
WIDTH = 11.0
DPI = 100

# The trials' memory columns and how a reader calls them (memory figure, Pareto axis).
MEMORY_SERIES = {
    "peak_allocated_bytes": "allocated (torch)",
    "peak_reserved_bytes": "reserved (torch)",
    "nvml_peak_used_bytes": "NVML device used",
    "nvml_process_peak_bytes": "NVML process",
    "cpu_peak_rss_bytes": "CPU RSS",
}


@dataclass(frozen=True)
class RenderedFigure:
    name: str
    title: str
    caption: str
    png: bytes
    svg: bytes


def setup_theme():
    """Agg backend and the seaborn theme; returns seaborn (imported here: it is heavy)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
    matplotlib.rcParams["svg.hashsalt"] = "bench-report"  # stable ids: diffable SVGs
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (and small)
    return sns


def new_figure(rows: int, cols: int, height: float = ROW_HEIGHT, width: float = WIDTH):
    """A Figure and its axes as a 2-D array (``axes[row, col]``), ``height`` per row."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def render(fig) -> tuple[bytes, bytes]:
    """PNG and SVG bytes, without dates or software versions (same input, same bytes)."""
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()


def compact_bytes(v: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


def bytes_axis(ax, axis: str = "y") -> None:
    """Log2 byte axis when the values span 4x or more, else linear; compact labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo >= 4:
        getattr(ax, f"set_{axis}scale")("log", base=2)
        a.set_major_locator(LogLocator(base=2, numticks=10))
    else:
        getattr(ax, f"set_{axis}scale")("linear")
        a.set_major_locator(MaxNLocator(6))
    a.set_major_formatter(FuncFormatter(lambda v, _pos: compact_bytes(v) if v > 0 else ""))


def log2_axis(ax, axis: str = "x") -> None:
    """Log2 scale (batch sizes are powers of two) with plain-number labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log", base=2)
    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(LogLocator(base=2, numticks=12))
    a.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if v >= 1 else f"{v:.3g}"))


def workload_rows(trials: pd.DataFrame, notes: list[str], what: str) -> list:
    """The workloads that get a row of ``what`` (at most MAX_WORKLOAD_ROWS, with a note)."""
    names = [w for w in pd.unique(trials["workload"])]
    if len(names) > MAX_WORKLOAD_ROWS:
        notes.append(f"{what}: showing the first {MAX_WORKLOAD_ROWS} of {len(names)} workloads")
        names = names[:MAX_WORKLOAD_ROWS]
    return names


def matches(series: pd.Series, value) -> pd.Series:
    """``series == value``, where a missing value (None, NaN) matches missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return series.isna()
    return series == value


def plain(text: object) -> str:
    """Data strings on a figure: whitespace (newlines, CR) collapsed, and '$' escaped so
    matplotlib does not parse a config value as mathtext (or fail on an unbalanced one)."""
    return " ".join(str(text).split()).replace("$", r"\$")


def workload_label(w) -> str:
    return plain(w) if isinstance(w, str) else "(unknown workload)"
