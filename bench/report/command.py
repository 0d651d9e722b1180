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
        nargs="*",
        type=Path,
        metavar="RESULTS",
        help="results folder (a sweep, a single run, or a folder of sweeps: one report "
        "each); several folders of one sweep (one per host) are read as one sweep, one "
        "report; default: the newest sweep under results/",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: RESULTS/report; the first RESULTS/report for several)",
    )
    parser.add_argument(
        "--target-loss",
        type=float,
        default=None,
        metavar="X",
        help="training loss that counts as 'reached' for steps/samples/time to "
        "target (default: chosen from the results and printed)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="the sweep's Optuna storage, as given to bench sweep (postgresql://... or "
        "journal:PATH): list the trials that finished on a host whose folder is not given",
    )
    parser.add_argument(
        "--prefer",
        choices=("newest", "first"),
        default=None,
        help="a trial whose rows differ between folders (two runs of one configuration): "
        "keep the run that started last, or the row of the folder given first; without "
        "it such trials are listed and nothing is written (exit 2)",
    )


def report_main(args: argparse.Namespace) -> int:
    """One report per results folder that ``args.results`` holds: itself when it is a
    sweep or a run, else each sweep directly under it (``results/`` with ``seed/`` and
    ``smoke/``), each to its own ``report/`` (or ``--out/<sweep>``). A sweep that fails
    does not stop the others; the failures are one error at the end. Several folders
    given are one sweep's, from several hosts: one report over all of them."""
    from bench.console import plain
    from bench.report.folders import newest_sweep, results_folders, sweep_folders

    given = list(args.results or [])
    if len(given) > 1:
        folders = sweep_folders(given)
        out = folders[0] / "report" if args.out is None else args.out
        for line in _report_one(folders, out, args):
            print(plain(line))
        return 0
    root = given[0] if given else None
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
            for line in _report_one([folder], out, args):
                print(plain(line))
        except BenchError as exc:
            if not several:
                raise
            failed.append(f"{folder.name}: {exc}")
    if failed:
        raise BenchError(
            f"{len(failed)} of {len(folders)} sweeps not reported: " + "; ".join(failed)
        )
    return 0


def _report_one(folders: list[Path], out: Path, args: argparse.Namespace) -> list[str]:
    """Build and write the report of ``folders`` read as one sweep; returns the lines
    that say what it holds. Results of several kinds of hardware are never pooled: one
    report each, under ``out/<hardware>/``."""
    from bench.console import plain
    from bench.report.build import build_report
    from bench.report.collect import gather, trials_text
    from bench.report.hardware import split_by_hardware

    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} exists and is not a folder")
    collected = gather(folders, prefer=args.prefer)
    lines = [c.line() for c in collected.conflicts]
    if collected.conflicts and args.prefer is None:
        for line in lines:
            print(plain(f"bench: {line}"), file=sys.stderr)  # paths from disk: ESC shown
        raise BenchError(
            f"{trials_text(len(lines))} {'differs' if len(lines) == 1 else 'differ'} between "
            "the folders (listed above): two runs of "
            "one configuration; choose with --prefer newest|first"
        )
    notes = collected.notes()
    lines += notes[:1]  # where the rows came from (several folders)
    if args.storage is not None:
        notes += _cross_check(collected, args.storage, lines)
    results, collected.results = collected.results, None  # held by the parts alone
    parts = split_by_hardware(results, collected.folders)
    del results
    if len(parts) > 1:
        kinds = ", ".join(f"{p.hardware} ({p.trials} trials)" for p in parts)
        lines.append(
            f"the trials ran on {len(parts)} kinds of hardware ({kinds}): throughput and "
            "memory are not comparable across them, so one report each"
        )
    reports = []
    for part in parts:
        where = out if len(parts) == 1 else out / part.slug
        split = () if len(parts) == 1 else (f"trials that ran on {part.hardware} only",)
        report = build_report(
            folders[0],
            target=args.target_loss,
            results=part.take(),
            notes=[*split, *notes, *part.notes],
        )
        reports.append((report, where))
    for report, where in reports:  # written once every part is built: bad input writes nothing
        lines.append(_write(report, where))
    return lines


def _cross_check(collected, storage: str, lines: list[str]) -> list[str]:
    """Cross-check with the study: lines (report notes too, when they find something)
    for trials recorded there whose folder was not given, and the reverse."""
    from bench.report.study_check import cross_check, open_study

    if collected.sweep is None:
        raise BenchError(
            "--storage: the study is named as the sweep, and these results name no one "
            "sweep (a bench run's, or rows of several sweeps)"
        )
    study = open_study(storage, collected.sweep)
    trials = collected.results.trials
    rows = zip(trials["trial_key"], trials["optuna_trial"], strict=True)
    found = cross_check(study, rows, collected.spec_hash)
    lines += found
    return [] if found[0].startswith("--storage: ") else found


def _write(report, out: Path) -> str:
    """Write one report; returns the line that says what it holds."""
    from bench.report.build import write_report
    from bench.report.scaling import format_targets

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
