"""The report's figures: seaborn on matplotlib's Agg backend, each as PNG and SVG.

Figures are built on ``matplotlib.figure.Figure`` objects (no pyplot global state), so
rendering is thread-safe and nothing leaks between figures. One row per workload where a
figure compares values across configurations (losses and throughputs of different
workloads are not comparable). Each builder returns a Figure, or None with the reason
appended to ``notes`` when the results hold nothing it could show.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import ProbeRecord
from bench.report import curves
from bench.report.scaling import CriticalBatchFit, format_targets

MAX_WORKLOAD_ROWS = 4
MAX_LEGEND_CONFIGS = 10
MODE_STYLE = {"sgd": ":", "mbgd": "-", "bgd": "--"}
ACCUM_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
ROW_HEIGHT = 3.3
WIDTH = 11.0
DPI = 100

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


def _setup():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
    matplotlib.rcParams["svg.hashsalt"] = "bench-report"  # stable ids: diffable SVGs
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (and small)
    return sns


def _figure(rows: int, cols: int, height: float = ROW_HEIGHT, width: float = WIDTH):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def render(fig) -> tuple[bytes, bytes]:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()


def compact_bytes(v: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


def _bytes_axis(ax, axis: str = "y") -> None:
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


def _log2_axis(ax, axis: str = "x") -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log", base=2)
    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(LogLocator(base=2, numticks=12))
    a.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if v >= 1 else f"{v:.3g}"))


def _workloads(trials: pd.DataFrame, notes: list[str], what: str) -> list:
    names = [w for w in pd.unique(trials["workload"])]
    if len(names) > MAX_WORKLOAD_ROWS:
        notes.append(f"{what}: showing the first {MAX_WORKLOAD_ROWS} of {len(names)} workloads")
        names = names[:MAX_WORKLOAD_ROWS]
    return names


def _same(series: pd.Series, value) -> pd.Series:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return series.isna()
    return series == value


def plain(text: object) -> str:
    """Data strings on a figure: whitespace (newlines, CR) collapsed, and '$' escaped so
    matplotlib does not parse a config value as mathtext (or fail on an unbalanced one)."""
    return " ".join(str(text).split()).replace("$", r"\$")


def _wname(w) -> str:
    return plain(w) if isinstance(w, str) else "(unknown workload)"


# -- 1. loss curves ------------------------------------------------------------------------


def loss_curves(prep, binned: pd.DataFrame, notes: list[str]):
    if not len(binned):
        notes.append("loss curves: no steps table")
        return None
    sns = _setup()
    from matplotlib.lines import Line2D

    trials = prep.trials[prep.trials["trial_key"].isin(set(binned["trial_key"]))]
    workloads = _workloads(trials, notes, "loss curves")
    fig, axes = _figure(len(workloads), 3)
    configs = prep.configs.set_index("config_id")
    for r, w in enumerate(workloads):
        t = trials[_same(trials["workload"], w)]
        cids = [c for c in prep.configs["config_id"] if c in set(t["config_id"])]
        by_label = len(cids) <= MAX_LEGEND_CONFIGS
        if by_label:
            palette = dict(zip(cids, sns.color_palette("tab10", len(cids)), strict=True))
        else:
            import matplotlib as mpl

            bs = configs.loc[cids, "effective_batch_size"].astype(float)
            lo, hi = np.log2(bs.min()), np.log2(bs.max())
            norm = mpl.colors.Normalize(lo, hi if hi > lo else lo + 1)
            cmap = sns.color_palette("viridis", as_cmap=True)
            palette = {c: cmap(norm(np.log2(configs.loc[c, "effective_batch_size"]))) for c in cids}
        accum_values = sorted(
            {int(k) for k in configs.loc[cids, "accumulation_steps"].dropna() if k > 1}
        )
        accum_marker = {
            k: ACCUM_MARKERS[i % len(ACCUM_MARKERS)] for i, k in enumerate(accum_values)
        }
        b = binned[binned["trial_key"].isin(set(t["trial_key"]))]
        for col, (x, xlabel) in enumerate(curves.X_AXES.items()):
            ax = axes[r, col]
            bands, partial = curves.config_bands(b, t, x)
            positive = True
            for cid in cids:
                d = bands[bands["config_id"] == cid]
                if not len(d):
                    continue
                c = configs.loc[cid]
                k = int(c["accumulation_steps"]) if pd.notna(c["accumulation_steps"]) else 1
                style = {"color": palette[cid], "linestyle": MODE_STYLE.get(c["mode"], "-")}
                ax.plot(
                    d["x"],
                    d["mean"],
                    **style,
                    linewidth=1.4,
                    marker=accum_marker.get(k),
                    markevery=max(1, len(d) // 8),
                    markersize=4,
                    label=plain(c["config_label"]),
                )
                ax.fill_between(
                    d["x"], d["lo"], d["hi"], color=palette[cid], alpha=0.18, linewidth=0
                )
                # Where not every seed has a value, the seeds that do, each on its own.
                for _, one in partial[partial["config_id"] == cid].groupby("trial_key"):
                    ax.plot(one["x"], one["loss"], **style, linewidth=0.7, alpha=0.45)
                positive &= bool((d["x"] > 0).all())
            if positive and len(bands):
                ax.set_xscale("log")
            m = np.r_[bands["mean"].to_numpy(dtype=float), partial["loss"].to_numpy(dtype=float)]
            m = m[np.isfinite(m)]
            if len(m) and m.min() > 0 and m.max() / m.min() > 10:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{_wname(w)}\ntraining loss" if col == 0 else "")
        if by_label:
            axes[r, 2].legend(
                fontsize=7,
                loc="upper right",
                title="mean, band = seed min–max\n(faint: single seeds past a seed's end)",
                title_fontsize=7,
            )
        else:
            import matplotlib as mpl

            sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
            cb = fig.colorbar(sm, ax=axes[r, 2])
            cb.set_label("log2 effective batch B")
            handles = [
                Line2D([], [], color="0.3", linestyle=s, label=m) for m, s in MODE_STYLE.items()
            ]
            handles += [
                Line2D([], [], color="0.3", marker=mk, linestyle="", label=f"k={k}")
                for k, mk in accum_marker.items()
            ]
            axes[r, 2].legend(handles=handles, fontsize=7, loc="upper right")
    fig.suptitle(
        "Training loss: mean over seeds with min–max band where every seed ran, faint: the "
        "seeds left after one stopped\n(line style = sgd/mbgd/bgd, markers = accumulation k > 1)"
    )
    return fig


# -- 2. throughput -------------------------------------------------------------------------


def throughput(prep, notes: list[str]):
    t = prep.trials[(prep.trials["status"] == "ok") & prep.trials["samples_per_s"].notna()]
    if not len(t):
        notes.append("throughput: no ok trial has samples_per_s")
        return None
    sns = _setup()
    workloads = _workloads(t, notes, "throughput")
    fig, axes = _figure(len(workloads), 2)
    for r, w in enumerate(workloads):
        d = t[_same(t["workload"], w)].copy()
        d["accumulation"] = "k=" + d["accumulation_steps"].fillna(1).astype(int).astype(str)
        d["precision"] = d["precision"].fillna("?")
        order = sorted(pd.unique(d["accumulation"]), key=lambda s: int(s[2:]))
        style = "precision" if d["precision"].nunique() > 1 else None
        for col, x in enumerate(("micro_batch_size", "effective_batch_size")):
            ax = axes[r, col]
            dd = d[d[x].notna() & (d[x] > 0)]
            if not len(dd):
                continue
            sns.lineplot(
                data=dd,
                x=x,
                y="samples_per_s",
                hue="accumulation",
                hue_order=order,
                style=style,
                estimator="median",
                errorbar=("pi", 100),
                marker="o",
                ax=ax,
                legend=(col == 1),
            )
            _log2_axis(ax, "x")
            ax.set_xlabel("micro-batch size b" if col == 0 else "effective batch size B = b·k")
            ax.set_ylabel(f"{_wname(w)}\nsamples/s" if col == 0 else "")
            ax.set_ylim(bottom=0)
    fig.suptitle("Throughput: median over seeds, band = min–max")
    return fig


# -- 3. memory -----------------------------------------------------------------------------


def memory(prep, probes: pd.DataFrame | None, notes: list[str]):
    t = prep.trials
    ok = t[t["status"] == "ok"]
    series = [c for c in MEMORY_SERIES if ok[c].notna().any()]
    oom = t[t["status"] == "oom"]
    have_probes = probes is not None and len(probes)
    if not series and not len(oom) and not have_probes:
        notes.append("memory: no memory columns, OOM trials or OOM probes")
        return None
    sns = _setup()
    from matplotlib.transforms import blended_transform_factory

    workloads = _workloads(t, notes, "memory")
    fig, axes = _figure(len(workloads), 1, width=WIDTH)
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        d = ok[_same(ok["workload"], w) & ok["micro_batch_size"].notna()]
        long = (
            d.melt(
                id_vars=["micro_batch_size"],
                value_vars=series,
                var_name="series",
                value_name="bytes",
            ).dropna(subset=["bytes"])
            if series
            else pd.DataFrame()
        )
        if len(long):
            long["series"] = long["series"].map(MEMORY_SERIES)
            sns.lineplot(
                data=long,
                x="micro_batch_size",
                y="bytes",
                hue="series",
                estimator="median",
                errorbar=("pi", 100),
                marker="o",
                ax=ax,
            )
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        o = oom[_same(oom["workload"], w) & oom["micro_batch_size"].notna()]
        if len(o):
            bs = sorted(set(o["micro_batch_size"].astype(float)))
            ax.scatter(
                bs,
                [0.95] * len(bs),
                transform=trans,
                marker="X",
                s=60,
                color="crimson",
                zorder=5,
                label="OOM trial",
                clip_on=False,
            )
        if have_probes:
            p = (
                probes
                if "workload" not in probes or probes["workload"].isna().all()
                else probes[_same(probes["workload"], w) | probes["workload"].isna()]
            )
            _draw_probes(ax, p, trans)
        if len(long) or len(o) or have_probes:
            xs = [*long.get("micro_batch_size", []), *o["micro_batch_size"]]
            if have_probes:
                xs += list(probes["micro_batch_size"].dropna())
            xs = [float(x) for x in xs if x > 0]
            if xs:  # OOM crosses sit in axes coordinates: widen x so they are inside
                ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
            _log2_axis(ax, "x")
            if len(long):
                _bytes_axis(ax, "y")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_xlabel("micro-batch size b")
        ax.set_ylabel(f"{_wname(w)}\npeak memory")
    fig.suptitle("Peak memory against micro-batch (median, band = min–max)")
    return fig


def probe_boundaries(p: pd.DataFrame) -> pd.DataFrame:
    """Per search (one ``bench oom`` search: same configuration, capacity, machine; see
    ``_probe_frame``): its label, capacity, the smallest micro-batch that did not
    fit (``first_bad``, NaN if none), whether that was an OOM or a kill from outside
    (``bad_outcome``), and the largest ok micro-batch below it (``last_ok``)."""
    cols = ["search", "label", "capacity_bytes", "first_bad", "bad_outcome", "last_ok"]
    rows = []
    for search, q in p.groupby("search", sort=False):
        cap = float(q["capacity_bytes"].fillna(0).iloc[0])
        # What tells searches apart in a reader's terms: capacity, precision, optimizer.
        parts = [compact_bytes(cap) if cap > 0 else "device"]
        for col in ("precision", "optimizer"):
            parts += [str(v) for v in pd.unique(q[col].dropna())]
        bad = q[q["outcome"].isin(["oom", "killed"])].sort_values("micro_batch_size")
        okb = q.loc[q["outcome"] == "ok", "micro_batch_size"].dropna()
        first_bad = float(bad["micro_batch_size"].iloc[0]) if len(bad) else np.nan
        below = okb[okb < first_bad] if len(bad) else okb
        rows.append(
            {
                "search": search,
                "label": " ".join(plain(x) for x in parts),
                "capacity_bytes": cap,
                "first_bad": first_bad,
                "bad_outcome": bad["outcome"].iloc[0] if len(bad) else None,
                "last_ok": float(below.max()) if len(below) else np.nan,
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    # Searches that differ in something else (options, machine, code): tell them apart.
    twice = out["label"].duplicated(keep=False)
    out.loc[twice, "label"] += " [" + out.loc[twice, "search"].astype(str).str[:6] + "]"
    return out


def _draw_probes(ax, p: pd.DataFrame, trans) -> None:
    """Per capacity a line (a capacity of 0 means 'no cap' in probes.parquet); per search
    the boundary = the smallest micro-batch that did not fit, with the largest ok below,
    and its probes' peaks."""
    if not len(p):
        return
    import seaborn as sns

    for cap in sorted(c for c in set(p["capacity_bytes"].fillna(0)) if c > 0):
        ax.axhline(
            cap, color="0.35", linestyle="--", linewidth=1, label=f"capacity {compact_bytes(cap)}"
        )
    lines = probe_boundaries(p)
    colors = sns.color_palette("dark", max(1, len(lines)))
    for line, color in zip(lines.itertuples(), colors, strict=False):
        q = p[p["search"] == line.search]
        name = line.label
        if line.bad_outcome is not None:
            last_ok = f", fits b={line.last_ok:g}" if np.isfinite(line.last_ok) else ""
            # A kill from outside (the machine's OOM killer, a person) is not the cap's
            # answer, though bench oom counts it as OOM once it happened twice.
            what = "OOM from" if line.bad_outcome == "oom" else "killed (not the cap) at"
            ax.axvline(
                line.first_bad,
                color=color,
                linestyle=":",
                linewidth=1.4,
                label=f"{name}: {what} b={line.first_bad:g}{last_ok}",
            )
        for outcome, marker in (("ok", "o"), ("oom", "x"), ("killed", "v")):
            r = q[(q["outcome"] == outcome) & q["peak_bytes"].notna() & (q["peak_bytes"] > 0)]
            if len(r):
                ax.scatter(
                    r["micro_batch_size"],
                    r["peak_bytes"],
                    marker=marker,
                    s=22,
                    zorder=4,
                    color=color,
                    facecolors="none" if marker == "o" else None,
                    label=f"{name}: probe {outcome}",
                )


def load_oom_probes(folder: Path, notes: list[str]) -> pd.DataFrame | None:
    """Probes written by ``bench oom`` (rows of ``bench.records.ProbeRecord``):
    ``<folder>/probes.parquet``, ``<folder>/oom/*/probes.parquet`` and
    ``<folder>/../oom/*/probes.parquet``, each read as the current schema (older versions
    upgraded, absent columns null). The newest row per ``probe_key`` wins, as in bench
    oom's own reuse; rows without a micro-batch or an outcome are left out. A probes file
    that cannot be read is a note in the report, not an error: it is optional input."""
    from bench.errors import BenchError
    from bench.store import read_table

    paths = [
        folder / "probes.parquet",
        *sorted(folder.glob("oom/*/probes.parquet")),
        *sorted(folder.parent.glob("oom/*/probes.parquet")),
    ]
    frames = []
    for path in dict.fromkeys(p for p in paths if p.is_file()):
        try:
            rows = read_table(path, ProbeRecord).to_pylist()
        except BenchError:
            notes.append(f"OOM probes {path}: unreadable, skipped")
            continue
        df = _probe_frame(_newest_per_key([ProbeRecord(**r) for r in rows]))
        if not len(df):
            notes.append(f"OOM probes {path}: no probe with a micro-batch and an outcome")
            continue
        df["source"] = str(path)
        frames.append(df)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def _newest_per_key(probes: list[ProbeRecord]) -> list[ProbeRecord]:
    """A probe measured again (--fresh, or after a kill) supersedes its older rows."""
    last = {p.probe_key: i for i, p in enumerate(probes) if p.probe_key is not None}
    return [p for i, p in enumerate(probes) if p.probe_key is None or last[p.probe_key] == i]


def _probe_frame(probes: list[ProbeRecord]) -> pd.DataFrame:
    """One row per drawable probe: micro-batch, outcome ("killed" where SIGKILL from
    outside the cap ended it), capacity (0 = no cap), peak, and the search it belongs to
    (``search_key``, else workload + precision + capacity)."""
    cols = ["micro_batch_size", "outcome", "capacity_bytes", "peak_bytes"]
    cols += ["workload", "precision", "optimizer", "search"]
    rows = []
    for p in probes:
        if not p.micro_batch_size or p.micro_batch_size <= 0 or p.outcome is None:
            continue
        precision = p.precision or _config_value(p, "precision")
        cap = p.capacity_bytes
        rows.append(
            {
                "micro_batch_size": p.micro_batch_size,
                "outcome": "killed" if p.killed else p.outcome,
                "capacity_bytes": np.nan if cap is None else cap,
                "peak_bytes": _probe_peak(p),
                "workload": p.workload,
                "precision": precision,
                "optimizer": _config_value(p, "optimizer"),
                "search": p.search_key or f"{p.workload}|{precision}|{cap or 0}",
            }
        )
    df = pd.DataFrame(rows, columns=cols)
    for c in ("micro_batch_size", "capacity_bytes", "peak_bytes"):
        df[c] = pd.to_numeric(df[c]).astype(float)
    return df


def _probe_peak(p: ProbeRecord) -> float:
    """bench oom's own peak, the one its search compares with the capacity (on CUDA the
    context is added to the allocator's reserved peak, as the capacity includes it);
    for a row without a device, the first measured of its peaks."""
    if p.device is not None:
        from bench.oom import peak_bytes

        value = peak_bytes(dataclasses.asdict(p))
    else:
        candidates = (
            p.peak_reserved_bytes,
            p.peak_allocated_bytes,
            p.nvml_peak_used_bytes,
            p.cpu_peak_rss_bytes,
            p.child_rss_hwm_bytes,
        )
        value = next((v for v in candidates if v is not None), None)
    return np.nan if value is None else float(value)


def _config_value(p: ProbeRecord, key: str):
    """``key`` of the probe's ``config_json`` (None when absent or unreadable)."""
    try:
        config = json.loads(p.config_json) if p.config_json else None
    except json.JSONDecodeError:
        return None
    return config.get(key) if isinstance(config, dict) else None


# -- 4. steps to target --------------------------------------------------------------------


def steps_to_target(points: pd.DataFrame, fits: dict, target, notes: list[str]):
    if target is None or not len(points):
        notes.append("steps to target: no target loss (no steps table or no ok trial)")
        return None
    sns = _setup()
    from matplotlib.transforms import blended_transform_factory

    workloads = _workloads(points, notes, "steps to target")
    fig, axes = _figure(len(workloads), 2)
    palette = sns.color_palette("deep")
    for r, w in enumerate(workloads):
        p = points[_same(points["workload"], w) & (points["effective_batch_size"] > 0)]
        fit: CriticalBatchFit | None = fits.get(w)
        reached = p[np.isfinite(p["steps_to_target"])]
        never = p[~np.isfinite(p["steps_to_target"])]
        for col, (ycol, ylabel) in enumerate(
            (
                ("steps_to_target", "optimizer steps to target"),
                ("samples_to_target", "samples to target"),
            )
        ):
            ax = axes[r, col]
            trans = blended_transform_factory(ax.transData, ax.transAxes)
            if len(reached):
                ax.scatter(
                    reached["effective_batch_size"],
                    reached[ycol],
                    color=palette[0],
                    s=28,
                    zorder=3,
                    label="configuration (median over seeds)",
                )
                # Perfect scaling through the smallest batch: S ∝ 1/B, E constant.
                ref = reached.sort_values(["effective_batch_size", "steps_to_target"]).iloc[0]
                bb = np.geomspace(
                    p["effective_batch_size"].min(), p["effective_batch_size"].max(), 50
                )
                s_ref = ref["steps_to_target"] * ref["effective_batch_size"] / bb
                ax.plot(
                    bb,
                    s_ref if col == 0 else s_ref * bb,
                    color="0.45",
                    linestyle=":",
                    label="perfect scaling",
                )
                if fit is not None:
                    y = fit.steps(bb) if col == 0 else fit.samples(bb)
                    ax.plot(
                        bb,
                        y,
                        color=palette[3],
                        linewidth=1.6,
                        label=f"fit S_min(1+B_crit/B): {fit.b_crit_text()}",
                    )
                    if fit.bound is None:
                        ax.axvline(fit.b_crit, color=palette[3], linestyle="--", linewidth=0.8)
            if len(never):
                xs = never["effective_batch_size"].astype(float)
                ax.scatter(
                    xs,
                    [0.96] * len(xs),
                    transform=trans,
                    marker="^",
                    s=50,
                    facecolors="none",
                    edgecolors="crimson",
                    zorder=4,
                    clip_on=False,
                    label="not reached (median seed)",
                )
            _log2_axis(ax, "x")
            if len(reached):
                _log2_axis(ax, "y")
                lo, hi = reached[ycol].min(), reached[ycol].max()
                ax.set_ylim(lo / 2, hi * 2.5)
            ax.set_xlabel("effective batch size B")
            ax.set_ylabel(f"{_wname(w)}\n{ylabel}" if col == 0 else ylabel)
            ax.legend(fontsize=7, loc="upper right" if col == 0 else "upper left")
        if fit is not None:
            # Of S_min and E_min, only what the measured side of B_crit determines.
            lines = [fit.b_crit_text() + (" (not located)" if fit.bound else "")]
            if fit.bound != ">":
                lines.append(f"S_min ≈ {fit.s_min:.3g} steps")
            if fit.bound != "<":
                lines.append(f"E_min ≈ {fit.e_min:.3g} samples")
            axes[r, 0].text(
                0.02,
                0.04,
                "\n".join(lines),
                transform=axes[r, 0].transAxes,
                fontsize=8,
                va="bottom",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
            )
        elif len(reached):
            notes.append(
                f"steps to target ({_wname(w)}): fewer than 3 batch sizes reached the "
                "target, no B_crit fit"
            )
    fig.suptitle(
        f"Steps and samples to reach training loss ≤ {plain(format_targets(target))} "
        "(McCandlish et al. 2018: S = S_min(1 + B_crit/B))"
    )
    return fig


# -- 5. throughput vs memory, Pareto --------------------------------------------------------


def pareto(summary: pd.DataFrame, notes: list[str]):
    d = summary[summary["samples_per_s"].notna() & summary["peak_memory_bytes"].notna()]
    if not len(d):
        notes.append("throughput vs memory: no configuration has both samples/s and peak memory")
        return None
    sns = _setup()
    import matplotlib as mpl

    # One row per workload: each has its own front (tables.pareto_mask) and its own
    # loss scale, so neither the circles nor the colours compare across workloads.
    workloads = _workloads(d, notes, "throughput vs memory")
    fig, axes = _figure(len(workloads), 1, height=4.2, width=WIDTH * 0.75)
    cmap = sns.color_palette("rocket_r", as_cmap=True)
    for r, w in enumerate(workloads):
        ax = axes[r, 0]
        dw = d[_same(d["workload"], w)]
        loss = dw["tail_loss"].astype(float)
        have_loss = loss.notna().any()
        if have_loss:
            norm = mpl.colors.Normalize(
                loss.min(), loss.max() if loss.max() > loss.min() else loss.min() + 1
            )
            colors = [cmap(norm(v)) if pd.notna(v) else (0.6, 0.6, 0.6, 1) for v in loss]
        else:
            colors = ["0.4"] * len(dw)
        ax.scatter(
            dw["peak_memory_bytes"],
            dw["samples_per_s"],
            c=colors,
            s=40,
            zorder=3,
            edgecolors="white",
            linewidths=0.5,
        )
        front = dw[dw["pareto"]].sort_values("peak_memory_bytes")
        if len(front):
            ax.scatter(
                front["peak_memory_bytes"],
                front["samples_per_s"],
                s=140,
                facecolors="none",
                edgecolors="black",
                linewidths=1.3,
                zorder=4,
                label="Pareto-optimal",
            )
            if len(front) <= 8:
                for _, row in front.iterrows():
                    ax.annotate(
                        _short(row["config_label"]),
                        (row["peak_memory_bytes"], row["samples_per_s"]),
                        textcoords="offset points",
                        xytext=(6, 4),
                        fontsize=7,
                    )
            ax.legend(fontsize=8, loc="best")
        _bytes_axis(ax, "x")
        if dw["samples_per_s"].min() > 0:
            ax.set_yscale("log")
        ax.set_xlabel("peak memory (" + _memory_source(dw) + ")")
        ax.set_ylabel(f"{_wname(w)}\nsamples/s (median over seeds)")
        if have_loss:
            sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
            fig.colorbar(sm, ax=ax).set_label("tail loss (median)")
    fig.suptitle(
        "Throughput against peak memory; Pareto front per workload over samples/s ↑, "
        "memory ↓, tail loss ↓"
    )
    return fig


def _short(label: str, n: int = 40) -> str:
    label = plain(label)
    return label if len(label) <= n else label[: n - 1] + "…"


def _memory_source(d: pd.DataFrame) -> str:
    src = d["peak_memory_source"].dropna().unique()
    names = [MEMORY_SERIES.get(s, s) for s in src]
    return ", ".join(names) if names else "?"
