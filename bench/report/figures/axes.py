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


_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def _unit(v: float) -> tuple[str, float]:
    return next(((u, s) for u, s in _UNITS if abs(v) >= s), ("B", 1))


def bytes_text(values: list[float], one_unit: bool = False) -> list[str]:
    """Tick labels for byte counts, each in its own unit (``one_unit``: all in the
    largest's, as on a linear axis), with the fewest decimals that keep different values
    apart and each label within 5 % of the smallest gap between ticks: 315.2 MiB,
    315.4 MiB, never 315 MiB twice (nor 1 MiB for 1.4 MiB)."""
    finite = sorted({float(v) for v in values if np.isfinite(v)})
    common = _unit(max((abs(v) for v in finite), default=0.0)) if one_unit else None
    gaps = np.diff(finite)
    gap = float(gaps.min()) if len(gaps) else math.inf
    texts: list[str] = []
    for decimals in range(7):
        texts = []
        worst = 0.0
        for v in values:
            if not np.isfinite(v):
                texts.append("")
                continue
            unit, scale = common or _unit(v)
            texts.append(f"{v / scale:.{decimals}f} {unit}")
            worst = max(worst, abs(round(v / scale, decimals) * scale - v))
        if len({t for t in texts if t}) == len(finite) and worst <= 0.05 * gap:
            break
    return texts


def _bytes_locator():
    from matplotlib.ticker import Locator, MaxNLocator

    class BytesLocator(Locator):
        """Round numbers of the unit the axis reaches (0, 256, 512 KiB), not of bytes
        (0, 250000, 500000, which read 244.1 KiB)."""

        def __call__(self):
            lo, hi = self.axis.get_view_interval()
            return self.tick_values(lo, hi)

        def tick_values(self, vmin, vmax):
            _, scale = _unit(max(abs(vmin), abs(vmax)))
            steps = [1, 2, 2.5, 4, 5, 8, 10] if scale > 1 else [1, 2, 2.5, 5, 10]
            return MaxNLocator(6, steps=steps).tick_values(vmin / scale, vmax / scale) * scale

    return BytesLocator()


def _bytes_formatter():
    from matplotlib.ticker import Formatter

    class BytesFormatter(Formatter):
        """Tick labels by ``bytes_text``: the decimals are chosen over all ticks at once,
        so neighbouring ticks never repeat a label."""

        def __call__(self, x, pos=None):
            return bytes_text([x])[0] if x > 0 else ("0" if x == 0 else "")

        def format_ticks(self, values):
            linear = self.axis is not None and self.axis.get_scale() == "linear"
            texts = bytes_text([float(v) for v in values], one_unit=linear)
            return [
                t if v > 0 else "0" if v == 0 else "" for t, v in zip(texts, values, strict=True)
            ]

    return BytesFormatter()


def bytes_axis(ax, axis: str = "y") -> None:
    """Log2 byte axis when the values span 4x or more, else linear; labels in one unit
    with enough decimals that no two ticks read alike."""
    from matplotlib.ticker import LogLocator

    a = ax.yaxis if axis == "y" else ax.xaxis
    # The data's range, not the view's: a linear view's margin reaches below 0.
    lo, hi = ax.dataLim.intervaly if axis == "y" else ax.dataLim.intervalx
    if lo > 0 and hi / lo >= 4:
        getattr(ax, f"set_{axis}scale")("log", base=2)
        a.set_major_locator(LogLocator(base=2, numticks=10))
    else:
        getattr(ax, f"set_{axis}scale")("linear")
        a.set_major_locator(_bytes_locator())
    a.set_major_formatter(_bytes_formatter())


def legend_outside(ax, **kw):
    """A legend to the right of ``ax``, outside it: constrained layout makes room for it,
    and no line or point is hidden under it. A legend seaborn drew is moved there."""
    kw.setdefault("fontsize", 7)
    kw.setdefault("title_fontsize", 7)
    where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0}
    if ax.get_legend() is not None and "handles" not in kw:
        import seaborn as sns

        sns.move_legend(ax, **where, **kw)
        return ax.get_legend()
    return ax.legend(**where, **kw)


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


# Point labels: 7 pt text, offset (7, 3) pt from the point; a character is about
# 0.62 em wide. The axes narrow when the layout makes room for legends and colour bars
# beside them, so the width a label needs is taken 1.5 times over.
LABEL_PT, CHAR_EM, LABEL_ROOM = 7.0, 0.62, 1.5
LABEL_DX, LABEL_DY = 7, 3  # a label's offset from its point, in points


def annotate_ids(ax, x, y, ids) -> None:
    """Each point's id beside it; a point whose label would touch another's joins that
    label ('C1 C2 C3', 'C1 … C9 (9)'), so ids never print over each other. Call after
    the axes' scales and limits are set."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    ax.autoscale_view()
    px = ax.transData.transform(np.column_stack([np.where(ok, x, 1.0), np.where(ok, y, 1.0)]))
    pt = ax.figure.dpi / 72.0
    height = LABEL_PT * 1.2 * pt  # a line of 7 pt text

    def box(j: int, text: str) -> tuple[float, float, float, float]:
        """Where a label at point j would print (the offset below), with room to spare."""
        x0, y0 = px[j][0] + LABEL_DX * pt, px[j][1] + LABEL_DY * pt
        return x0, x0 + max(len(text), 2) * CHAR_EM * LABEL_PT * pt * LABEL_ROOM, y0, y0 + height

    def touch(a, b) -> bool:
        return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]

    clusters: list[list[int]] = []
    for i in np.flatnonzero(ok):
        # Joined only where the point's own label would touch a cluster's: a point whose
        # label fits beside it keeps it, so no point is left looking unlabelled.
        for c in clusters:
            if touch(box(int(i), _id_text([ids[i]])), box(c[0], _id_text([ids[j] for j in c]))):
                c.append(int(i))
                break
        else:
            clusters.append([int(i)])
    for c in clusters:
        ax.annotate(
            _id_text([ids[j] for j in sorted(c)]),
            (x[c[0]], y[c[0]]),
            textcoords="offset points",
            xytext=(LABEL_DX, LABEL_DY),
            fontsize=LABEL_PT,
        )


def _id_text(ids: list) -> str:
    names = [plain(i) for i in ids]
    return " ".join(names) if len(names) <= 4 else f"{names[0]} … {names[-1]} ({len(names)})"


def legend_text(label: object, n: int = 60) -> str:
    """A legend entry from data: ``plain``, cut to ``n`` characters. Entries start with
    the configuration's id, so a cut one still names it; the legend table has the rest."""
    text = plain(label)
    return text if len(text) <= n else text[: n - 1] + "…"


def workload_label(w) -> str:
    return plain(w) if isinstance(w, str) else "(unknown workload)"


def draw_not_reached(ax, never) -> None:
    """Open triangles at the top of the axes for the batch sizes (``never``'s
    ``effective_batch_size``) whose median seed never reached the target."""
    from matplotlib.transforms import blended_transform_factory

    xs = never["effective_batch_size"].astype(float)
    ax.scatter(
        xs,
        [0.96] * len(xs),
        transform=blended_transform_factory(ax.transData, ax.transAxes),
        marker="^",
        s=50,
        facecolors="none",
        edgecolors="crimson",
        zorder=4,
        clip_on=False,
        label="not reached (median seed)",
    )
