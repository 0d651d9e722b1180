"""``bench report``: a results folder in, ``report.md`` + ``index.html`` + figures out.

Everything is computed and rendered in memory first; files are written (atomically,
one by one) only once nothing can fail on bad input any more, so bad input leaves no
half-written report behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report import curves, memory, pareto, scaling, tables
from bench.report.folders import describe
from bench.report.markdown import markdown_table, md_cell
from bench.report.prepare import STATUSES, Prepared, prepare
from bench.store import TAIL_FRACTION, Results, load_results, write_bytes_atomic

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
    "throughput": "Samples per second against micro-batch b and effective batch B = b·k. One "
    "line per family of configurations that are alike in everything but the batch shape "
    "(named by what differs between families), each point one configuration: median over "
    "its seeds with min–max band.",
    "memory": "Memory a trial adds against micro-batch size: on CUDA the caching allocator's "
    "reserved and allocated peaks (reset at the trial's start) and NVML's growth over its "
    "baseline; on CPU the RSS high-water mark minus the RSS at the trial's start. A counter "
    "whose configurations all lie within what it resolves (its step, or the spread across "
    "seeds where larger) is not drawn: the notes say so. Crosses at the top mark "
    "micro-batch sizes where a trial ran out of memory; dashed lines and the dotted "
    "boundary come from `bench oom` probes when present.",
    "oom": "What `bench oom` found, per capacity (its memory cap): the largest micro-batch b* "
    "that ran its probe steps, and the first that did not (x), one line per precision and "
    "optimizer. A search under the capacity after the safety margin is a point of its own "
    "at that smaller capacity. Stars: the (b, k) the planner chose for --target-batch B "
    "(the fastest of its candidates, each measured under the capacity after the margin), "
    "with its samples/s.",
    "steps_to_target": "Optimizer steps and samples to reach the target training loss against "
    "effective batch B (log2–log2). Dotted: perfect scaling (steps ∝ 1/B) "
    "through the smallest batch. Solid: least-squares fit of "
    "S(B) = S_min(1 + B_crit/B) (McCandlish et al. 2018) to the best "
    "configuration per B; where B_crit lies outside the measured B the fit does not locate "
    "it and only a bound is given. Open triangles: configurations whose median seed "
    "never reached the target.",
    "noise_scale": "The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) "
    "against samples seen, measured inside accumulation windows every noise_scale_every "
    "steps (an EMA over sampled steps), one line per configuration (median over seeds; "
    "log–log); dashed: the B_crit fitted from steps-to-target, which B_simple predicts.",
    "time_to_target": "Wall time until the smoothed training loss first reaches the target, "
    "against effective batch B: median over seeds (a seed that never got there counts as "
    "never), one point per configuration with its id. The star marks the configuration "
    "that got there first: what to run when wall time is the budget. Open triangles: "
    "configurations whose median seed never reached the target.",
    "pareto": "Throughput against the memory a trial adds, coloured by tail loss (the training "
    "loss averaged over the last 5 % of samples; medians over seeds; dark = low), each "
    "point labelled with its configuration id. One row per workload. Circled: "
    "Pareto-optimal configurations (no other of the same workload is at least as fast, as "
    "small and as low in loss, and better in one, where differences within the tolerances "
    "of the Pareto table are ties). A shaded band: every configuration within the memory "
    "resolution.",
}
FIGURE_TITLES = {
    "loss_curves": "Loss curves",
    "throughput": "Throughput",
    "memory": "Memory a trial adds",
    "oom": "OOM boundary",
    "steps_to_target": "Steps and samples to target",
    "noise_scale": "Gradient noise scale",
    "time_to_target": "Wall time to target",
    "pareto": "Throughput vs memory (Pareto)",
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
    # Per workload: each memory counter's memory.Resolution, and the Pareto front's ties
    # (pareto.tolerances).
    resolutions: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)


def build_report(
    folder: str | Path,
    *,
    target: float | None = None,
    figures: bool = True,
    results: Results | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """The report of ``folder``, or of ``results`` already read (several folders read as
    one: ``bench.report.collect``; ``folder`` then names the first), with ``notes`` first
    among the report's notes."""
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
    results = load_results(folder) if results is None else results
    if not len(results.trials):
        raise BenchError(f"results are empty: no trial rows in {folder} ({describe(folder)})")
    lap("load")
    prep = prepare(results)
    del results  # the full steps table: only prep's lean columns are needed from here
    notes = [*notes, *prep.notes]
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
    resolutions = memory.resolutions(prep.trials, memory.cpu_count(folder))
    tolerance = pareto.tolerances(prep.trials, resolutions)
    summary = tables.config_summary(prep, points, tolerance)
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
        resolutions=resolutions,
        tolerance=tolerance,
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


def figure_objects(report: Report) -> list[tuple[str, object]]:
    """(name, matplotlib Figure) of every figure the results can fill, in report order."""
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
        "memory": lambda: F.memory(prep, probes, notes, report.resolutions),
        "oom": lambda: F.oom_boundaries(probes, notes),
        "steps_to_target": lambda: F.steps_to_target(
            report.points, {**report.fits, **report.bounds}, report.target, notes
        ),
        "noise_scale": lambda: F.noise_scale(prep, report.fits, notes),
        "time_to_target": lambda: F.time_to_target(
            report.points, prep.configs, report.target, notes
        ),
        "pareto": lambda: F.pareto(report.summary, notes, report.tolerance),
    }
    built = ((name, build()) for name, build in builders.items())
    return [(name, fig) for name, fig in built if fig is not None]


def render_figures(report: Report) -> list:
    from bench.report import figures as F

    out = []
    for name, fig in figure_objects(report):
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
    src = report.summary["trial_memory_source"].dropna().unique() if len(report.summary) else []
    if len(src):
        lines.append(
            "memory column: what a trial adds, as "
            + ", ".join(memory.COUNTERS[c][0] for c in src)
            + "; the first present of allocator reserved, NVML growth, allocator allocated, "
            "CPU RSS growth"
        )
    for w, res in report.resolutions.items():
        if "trial_memory_bytes" in res:
            name = w if isinstance(w, str) else "(unknown workload)"
            lines.append(f"{name}: memory resolves {res['trial_memory_bytes'].text()}")
    return lines


def _tables(report: Report) -> list[tuple[str, str, list[str], list[list[object]], list[str]]]:
    s = report.summary
    return [
        (
            "Configurations",
            "One row per configuration (seeds grouped), named by its id, its batch shape and "
            "what tells it apart from others of that shape (every setting: Configurations in "
            "full). Median over ok seeds, (min–max) where seeds "
            f"differ. Tail loss: the training loss averaged over the last {TAIL_FRACTION:.0%} of samples seen "
            "(the last step's loss is one batch's, noise at small B). Steps/time to target: "
            "median over seeds that ran, a seed that never reached counts as never; (r/n) = "
            "seeds that reached.",
            tables.CONFIG_HEADERS,
            tables.config_rows(s),
            tables.CONFIG_ALIGN,
        ),
        _legend_table(report),
        (
            "Pareto set",
            "Per workload, the configurations no other of that workload beats on samples/s, "
            "memory and tail loss at once (workloads are not on one scale). Differences "
            "within a tolerance are ties, so that noise does not decide: "
            + "; ".join(
                f"{w if isinstance(w, str) else '(unknown workload)'}: {pareto.tolerance_text(t)}"
                for w, t in report.tolerance.items()
            )
            + ". Samples/s and tail loss: the median seed-to-seed range over configurations "
            "with ≥ 2 seeds (exact without repeats); memory: its resolution.",
            tables.PARETO_HEADERS,
            tables.pareto_rows(s),
            tables.PARETO_ALIGN,
        ),
    ]


def _legend_table(report: Report) -> tuple[str, str, list[str], list[list[object]], list[str]]:
    headers, rows, align, shared = tables.legend(report.prep)
    intro = (
        "What each id in the tables and figures stands for: every setting that differs "
        "between configurations of this report."
    )
    if shared:
        intro += " The same in all: " + ", ".join(shared) + "."
    return ("Configurations in full", intro, headers, rows, align)


def markdown(report: Report) -> str:
    lines = ["# bench report", ""]
    lines += [f"- {md_cell(m)}" for m in _meta(report)]
    lines.append("")
    for title, intro, headers, rows, align in _tables(report):
        lines += [f"## {title}", "", md_cell(intro), "", markdown_table(headers, rows, align)]
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
