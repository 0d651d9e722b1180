"""``bench report``: a results folder in, ``report.md`` + ``index.html`` + figures out.

Everything is computed and rendered in memory first; files are written (atomically,
one by one) only once nothing can fail on bad input any more, so bad input leaves no
half-written report behind.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report import curves, scaling, tables
from bench.report.folders import describe
from bench.report.markdown import markdown_table, md_cell
from bench.report.prepare import STATUSES, Prepared, prepare
from bench.store import TAIL_FRACTION, load_results, write_bytes_atomic

FIGURE_CAPTIONS = {
    "loss_curves": "Training loss against optimizer steps, samples seen and wall time. One line "
    "per configuration (mean over seeds, band = min–max over seeds) where every seed of it "
    "has a value; past the end of a seed (diverged, stopped early) the mean of the rest "
    "would favour the survivors, so each remaining seed is drawn faintly on its own; dotted = SGD "
    "(B=1), solid = mini-batch, dashed = full batch; markers = gradient "
    "accumulation k > 1. The loss drawn is the smoothed loss that steps-to-target "
    "reads (centred mean over about as many samples as the largest batch holds), as bin means "
    "of at most 200 points per trial "
    "(plotting only; every number in the tables uses every step).",
    "throughput": "Samples per second against micro-batch b and effective batch B = b·k, median "
    "over seeds with min–max band, one colour per accumulation k.",
    "memory": "Peak memory against micro-batch size: every memory counter the trials recorded "
    "(torch allocator, NVML, or process RSS on CPU). Crosses at the top mark micro-batch "
    "sizes where a trial ran out of memory; dashed lines and the dotted boundary come "
    "from `bench oom` probes when present.",
    "steps_to_target": "Optimizer steps and samples to reach the target training loss against "
    "effective batch B (log2–log2). Dotted: perfect scaling (steps ∝ 1/B) "
    "through the smallest batch. Solid: least-squares fit of "
    "S(B) = S_min(1 + B_crit/B) (McCandlish et al. 2018) to the best "
    "configuration per B; where B_crit lies outside the measured B the fit does not locate "
    "it and only a bound is given. Open triangles: configurations whose median seed "
    "never reached the target.",
    "pareto": "Throughput against peak memory, coloured by tail loss (the training loss "
    "averaged over the last 5 % of samples; medians over seeds). "
    "One row per workload. Circled: Pareto-optimal configurations (no other of the same "
    "workload is at least as fast, as small and as low in loss, and better in one).",
}
FIGURE_TITLES = {
    "loss_curves": "Loss curves",
    "throughput": "Throughput",
    "memory": "Peak memory and OOM boundary",
    "steps_to_target": "Steps and samples to target",
    "pareto": "Throughput vs peak memory (Pareto)",
}


@dataclass
class Report:
    folder: Path
    target: float | dict | None  # one for all workloads, or per workload
    prep: Prepared
    summary: pd.DataFrame
    points: pd.DataFrame
    fits: dict  # per workload, fits whose B_crit lies inside the measured batch sizes
    figures: list = field(default_factory=list)
    # Per workload, fits whose B_crit lies outside them: only a bound is reported (kept
    # apart so nothing that prints fits' B_crit prints an unlocated number).
    bounds: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    markdown: str = ""
    html: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    smoothed: scaling.Smoothed | None = None


def build_report(
    folder: str | Path, *, target: float | None = None, figures: bool = True
) -> Report:
    folder = Path(folder)
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    if target is not None and not math.isfinite(target):
        raise BenchError(f"--target-loss must be a finite number, got {target}")
    results = load_results(folder)
    if not len(results.trials):
        raise BenchError(f"results are empty: no trial rows in {folder} ({describe(folder)})")
    lap("load")
    prep = prepare(results)
    del results  # the full steps table: only prep's lean columns are needed from here
    notes = list(prep.notes)
    if not len(prep.steps):
        notes.append("no steps table: loss curves and steps-to-target are left out")
    lap("prepare")

    chosen = target
    if chosen is None:
        chosen = scaling.default_targets(prep.steps, prep.trials) or None
        if chosen is not None:
            notes.append(
                f"target loss chosen automatically per workload ({scaling.format_targets(chosen)}: "
                "75th percentile of its configurations' final smoothed training loss); "
                "set --target-loss to fix it"
            )
    smoothed = scaling.smooth_loss(prep.steps, prep.trials) if len(prep.steps) else None
    reach = (
        scaling.steps_to_target(prep.steps, prep.trials, chosen, smoothed)
        if chosen is not None
        else None
    )
    points = scaling.scaling_points(prep.trials, reach)
    fits, bounds = _critical_batch_fits(points, notes)
    summary = tables.config_summary(prep, points)
    lap("analyse")

    report = Report(
        smoothed=smoothed,
        folder=folder,
        target=chosen,
        prep=prep,
        summary=summary,
        points=points,
        fits=fits,
        bounds=bounds,
        notes=notes,
    )
    if figures:
        report.figures = render_figures(report)
        lap("figures")
    report.markdown = markdown(report)
    report.html = html_page(report)
    lap("documents")
    report.timings_s = timings
    return report


def _critical_batch_fits(points: pd.DataFrame, notes: list[str]) -> tuple[dict, dict]:
    """Per workload, the S(B) fit over the best configuration per batch size: (fits that
    locate B_crit, fits that only bound it); a note where the law fits poorly."""
    fits, bounds = {}, {}
    best = scaling.best_per_batch(points)
    for w, g in best.groupby("workload", dropna=False, sort=False):
        fit = scaling.fit_critical_batch(
            g["effective_batch_size"].to_numpy(), g["steps_to_target"].to_numpy()
        )
        if fit is not None:
            (fits if fit.bound is None else bounds)[w] = fit
            if fit.rms_log_error > 0.25:  # the law explains the points poorly: say so
                name = w if isinstance(w, str) else "(unknown workload)"
                notes.append(
                    f"{name}: the S(B) fit is poor (rms log error {fit.rms_log_error:.2f}); "
                    "treat B_crit as a rough indication (too few steps or a noisy target?)"
                )
    return fits, bounds


def render_figures(report: Report) -> list:
    from bench.report import figures as F

    notes = report.notes
    prep = report.prep
    probes = F.load_oom_probes(report.folder, notes)
    # The loss figure draws the smoothed loss that steps-to-target is read from.
    display = report.smoothed.display if report.smoothed is not None else None
    binned = curves.bin_means(prep.steps, loss=display)
    builders = {
        "loss_curves": lambda: F.loss_curves(prep, binned, notes),
        "throughput": lambda: F.throughput(prep, notes),
        "memory": lambda: F.memory(prep, probes, notes),
        "steps_to_target": lambda: F.steps_to_target(
            report.points, {**report.fits, **report.bounds}, report.target, notes
        ),
        "pareto": lambda: F.pareto(report.summary, notes),
    }
    out = []
    for name, build in builders.items():
        fig = build()
        if fig is None:
            continue
        png, svg = F.render(fig)
        out.append(
            F.RenderedFigure(
                name=name,
                title=FIGURE_TITLES[name],
                caption=FIGURE_CAPTIONS[name],
                png=png,
                svg=svg,
            )
        )
    return out


def _meta(report: Report) -> list[str]:
    t = report.prep.trials
    counts = t["status"].value_counts()
    status = ", ".join(
        f"{s} {int(counts[s])}"
        for s in (*STATUSES, *sorted(set(counts.index) - set(STATUSES)))
        if s in counts
    )
    sweeps = ", ".join(sorted({str(s) for s in t["sweep"].dropna()})) or "-"
    devices = ", ".join(sorted({str(s) for s in t["device"].dropna()})) or "-"
    lines = [
        f"results: {report.folder}",
        f"sweep: {sweeps}",
        f"trials: {len(t)} ({status}) in {len(report.summary)} configurations",
        f"devices: {devices}",
    ]
    if report.target is not None:
        lines.append(f"target training loss: {scaling.format_targets(report.target)}")
    for w, fit in report.fits.items():
        w = w if isinstance(w, str) else "(unknown workload)"
        lines.append(
            f"{w}: B_crit ≈ {fit.b_crit:.3g} samples, S_min ≈ {fit.s_min:.3g} steps, "
            f"E_min ≈ {fit.e_min:.3g} samples (fit over {fit.points} batch sizes, "
            f"rms log error {fit.rms_log_error:.3f})"
        )
    for w, fit in report.bounds.items():
        w = w if isinstance(w, str) else "(unknown workload)"
        lines.append(
            f"{w}: {fit.bound_text()} (fit over {fit.points} batch sizes, "
            f"B = {fit.b_lo:g}–{fit.b_hi:g})"
        )
    src = report.summary["peak_memory_source"].dropna().unique() if len(report.summary) else []
    if len(src):
        lines.append(
            "peak memory column: "
            + ", ".join(map(str, src))
            + " (first present of reserved, NVML process, NVML used, allocated, CPU RSS)"
        )
    return lines


def _tables(report: Report) -> list[tuple[str, str, list[str], list[list[object]], list[str]]]:
    s = report.summary
    return [
        (
            "Configurations",
            "One row per configuration (seeds grouped): median over ok seeds, (min–max) where seeds "
            f"differ. Tail loss: the training loss averaged over the last {TAIL_FRACTION:.0%} of samples seen "
            "(the last step's loss is one batch's, noise at small B). Steps/time to target: "
            "median over seeds that ran, a seed that never reached counts as never; (r/n) = "
            "seeds that reached.",
            tables.CONFIG_HEADERS,
            tables.config_rows(s),
            tables.CONFIG_ALIGN,
        ),
        (
            "Pareto set",
            "Per workload, the configurations no other of that workload beats on samples/s, "
            "peak memory and tail loss at once (workloads are not on one scale).",
            tables.PARETO_HEADERS,
            tables.pareto_rows(s),
            tables.PARETO_ALIGN,
        ),
    ]


def markdown(report: Report) -> str:
    lines = ["# bench report", ""]
    lines += [f"- {md_cell(m)}" for m in _meta(report)]
    lines.append("")
    for title, intro, headers, rows, align in _tables(report):
        lines += [f"## {title}", "", intro, "", markdown_table(headers, rows, align)]
    for f in report.figures:
        lines += [f"## {f.title}", "", f"![{f.title}](figures/{f.name}.png)", "", f.caption, ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {md_cell(n)}" for n in report.notes] + [""]
    return "\n".join(lines)


def html_page(report: Report) -> str:
    from bench.report import html

    return html.page(
        title="bench report",
        meta=_meta(report),
        figures=report.figures,
        tables=_tables(report),
        notes=report.notes,
    )


def write_report(report: Report, out: Path) -> list[Path]:
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} exists and is not a folder")
    written = []
    for f in report.figures:
        for ext, data in (("png", f.png), ("svg", f.svg)):
            path = out / "figures" / f"{f.name}.{ext}"
            write_bytes_atomic(data, path)
            written.append(path)
    for name, text in (("report.md", report.markdown), ("index.html", report.html)):
        write_bytes_atomic(text.encode("utf-8"), out / name)
        written.append(out / name)
    return written


def summary_numbers(report: Report) -> dict:
    """Small machine-readable digest (used by the scale benchmark and tests)."""
    return {
        "trials": len(report.prep.trials),
        "configurations": len(report.summary),
        "target": report.target,
        "b_crit": {str(w): f.b_crit for w, f in report.fits.items()},
        "b_crit_bounds": {str(w): f.b_crit_text() for w, f in report.bounds.items()},
        "figures": [f.name for f in report.figures],
        "pareto": int(np.sum(report.summary["pareto"])) if len(report.summary) else 0,
    }
