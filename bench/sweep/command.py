"""``python -m bench sweep SPEC [--workers N] [--storage URL] [--results DIR] [--retry-failed]``.

Top-level imports stay light: ``python -m bench plan`` must not pay for optuna or torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.sweep.spec import SweepSpec


def results_folder(text: str) -> Path:
    """``--results DIR``: an empty name would be the current folder, unasked."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder ('.' for the current one)")
    return Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep spec, e.g. experiments/seed.toml")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes on this machine (default: one per GPU, or one per CPU core; "
        "one per GPU at most)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch CPU threads per worker (default: 1 when the workers are chosen for the "
        "CPU, else the cores divided between the workers)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage shared by several machines: postgresql://user@host/db; or "
        "journal:PATH (or a bare PATH) for a journal file elsewhere "
        "(default: an embedded journal in RESULTS/<sweep>/optuna.journal)",
    )
    parser.add_argument(
        "--results",
        type=results_folder,
        default=Path("results"),
        metavar="DIR",
        help="results root; the sweep writes DIR/<sweep>/ (default: results)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the trials whose status is 'failed' (oom and diverged are results, not retried)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the spec and list its trials (and skipped points); write nothing",
    )


def main(args: argparse.Namespace) -> int:
    from bench.sweep.runner import check_flags
    from bench.sweep.spec import load_spec

    threads = getattr(args, "threads", None)
    check_flags(args.workers, threads)  # before anything else: --dry-run refuses them too
    if args.storage is not None:
        from bench.sweep.storage import parse_storage

        parse_storage(args.storage, Path(args.results))  # refuse a bad URL before any work
    spec = load_spec(args.spec, expand=not args.dry_run)
    from bench.meters import check_environment

    check_environment()  # workers inherit this environment; a typo would fail every trial
    if args.dry_run:
        return dry_run(spec)
    from bench.procs.context import start_forkserver

    start_forkserver()  # it imports torch while the coordinator opens the study
    from bench.sweep.runner import run_sweep

    summary = run_sweep(
        spec,
        workers=args.workers,
        storage=args.storage,
        results=args.results,
        retry_failed=args.retry_failed,
        threads=threads,
        stream=sys.stderr,
    )
    if os.environ.get(
        "BENCH_SWEEP_SUMMARY"
    ):  # machine-readable, for scripts/bench_sweep_overhead.py
        from bench.sweep.runner import json_summary

        print(f"BENCH_SWEEP_SUMMARY {json_summary(summary)}", file=sys.stderr)
    return summary.exit_code


def dry_run(spec: SweepSpec) -> int:
    """List the spec's trials and skipped points as they are built (a large grid starts
    printing at once), then the count and the spec hash."""
    from bench.sweep.spec import Expansion, Skipped, count_points, describe_point

    mode = (
        f"search ({spec.search.sampler}, {spec.search.n_trials} trials)" if spec.search else "grid"
    )
    print(f"sweep {spec.name}: {spec.question.splitlines()[0] if spec.question else ''}")
    _, size = count_points(len(spec.cases), spec.axes, len(spec.seeds))
    print(f"{mode}: {size}, listed as they are built")
    walk = Expansion(spec, f"{spec.path}: ")
    for item in walk:
        if isinstance(item, Skipped):
            print(f"  skipped  {describe_point(item.params)}: {item.reason}")
        else:
            print(f"  {item.key}  {describe_point(item.params)}")
    walk.check()
    total = spec.search.n_trials if spec.search else len(walk.keys)
    print(f"{mode}: {len(walk.keys)} distinct points, {total} trials, spec hash {walk.spec_hash}")
    return 0
