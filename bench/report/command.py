"""argparse wiring for ``python -m bench report`` and ``python -m bench compare``.

The lead's ``bench/cli.py`` calls ``add_report_arguments(parser)`` / ``report_main(args)``
and ``add_compare_arguments(parser)`` / ``compare_main(args)``. Bad input raises
``BenchError`` (cli prints one line, exit 2). Heavy imports happen inside the mains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import BenchError


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=None,
        help="results folder (a sweep, a single run, or a folder of sweeps: one report "
        "each); default: the newest sweep under results/",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: RESULTS/report)"
    )
    parser.add_argument(
        "--target-loss",
        type=float,
        default=None,
        metavar="X",
        help="training loss that counts as 'reached' for steps/samples/time to "
        "target (default: chosen from the results and printed)",
    )


def report_main(args: argparse.Namespace) -> int:
    """One report per results folder that ``args.results`` holds: itself when it is a
    sweep or a run, else each sweep directly under it (``results/`` with ``seed/`` and
    ``smoke/``), each to its own ``report/`` (or ``--out/<sweep>``). A sweep that fails
    does not stop the others; the failures are one error at the end."""
    from bench.console import plain
    from bench.report.folders import newest_sweep, results_folders

    root = args.results
    folders = [newest_sweep(Path("results"))] if root is None else results_folders(root)
    several = len(folders) > 1
    if several:
        names = ", ".join(f.name for f in folders)
        print(plain(f"{root}: {len(folders)} sweeps ({names}), a report for each"))
    failed = []
    for folder in folders:
        out = folder / "report" if args.out is None else args.out
        if several and args.out is not None:
            out = args.out / folder.name
        try:
            print(plain(_report_one(folder, out, args.target_loss)))
        except BenchError as exc:
            if not several:
                raise
            failed.append(f"{folder.name}: {exc}")
    if failed:
        raise BenchError(
            f"{len(failed)} of {len(folders)} sweeps not reported: " + "; ".join(failed)
        )
    return 0


def _report_one(folder: Path, out: Path, target: float | None) -> str:
    """Build and write one folder's report; returns the line that says what it holds."""
    from bench.report.build import build_report, write_report
    from bench.report.scaling import format_targets

    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} exists and is not a folder")
    report = build_report(folder, target=target)
    try:
        write_report(report, out)
    except OSError as exc:
        raise BenchError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    fits = "; ".join(f"{w}: {f.b_crit_text()}" for w, f in {**report.fits, **report.bounds}.items())
    shown = f", target loss {format_targets(report.target)}" if report.target is not None else ""
    return (
        f"report: {out / 'index.html'} ({len(report.summary)} configurations, "
        f"{len(report.prep.trials)} trials, {len(report.figures)} figures{shown}"
        f"{'; ' + fits if fits else ''})"
    )


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", type=Path, help="baseline results folder")
    parser.add_argument("candidate", type=Path, help="candidate results folder")
    parser.add_argument(
        "--threshold",
        default="5%",
        help="smallest relative change that counts, e.g. 5%% or 0.05 (default 5%%)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help="metrics to compare (space or comma separated; default: "
        "samples_per_s step_time_ms_median peak_memory_bytes tail_loss; also final_loss, "
        "best_val_loss, ...)",
    )


def compare_main(args: argparse.Namespace) -> int:
    from bench.report.compare import append_step_summary, compare, markdown, parse_threshold
    from bench.report.metrics import parse_metrics

    threshold = parse_threshold(args.threshold)
    metrics = parse_metrics(args.metrics)
    result = compare(args.baseline, args.candidate, metrics=metrics, threshold=threshold)
    text = markdown(result)
    sys.stdout.write(text)
    sys.stdout.flush()
    warning = append_step_summary(text)
    if warning:
        print(warning, file=sys.stderr)
    return 1 if result.regressed else 0


def _standalone(argv: list[str] | None = None) -> int:
    """``python -m bench.report.command report|compare ...`` until cli.py wires these."""
    parser = argparse.ArgumentParser(prog="bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_report_arguments(sub.add_parser("report", help="figures and tables for a results folder"))
    add_compare_arguments(sub.add_parser("compare", help="baseline vs candidate, for a PR"))
    args = parser.parse_args(argv)
    try:
        return report_main(args) if args.command == "report" else compare_main(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_standalone())
