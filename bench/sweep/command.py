"""``python -m bench sweep SPEC [--workers N] [--storage URL] [--results DIR] [--retry-failed]``.

Top-level imports stay light: ``python -m bench plan`` must not pay for optuna or torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep spec, e.g. experiments/seed.toml")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine (one per GPU at most; CPU threads are shared out)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch CPU threads per worker (default: the cores divided between the workers; "
        "small models often run faster with 1)",
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
        type=Path,
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
    from bench.sweep.spec import describe_point, load_spec

    threads = getattr(args, "threads", None)
    check_flags(args.workers, threads)  # before anything else: --dry-run refuses them too
    if args.storage is not None:
        from bench.sweep.storage import parse_storage

        parse_storage(args.storage, Path(args.results))  # refuse a bad URL before any work
    spec = load_spec(args.spec)
    from bench.meters import check_environment

    check_environment()  # workers inherit this environment; a typo would fail every trial
    if args.dry_run:
        print(f"sweep {spec.name}: {spec.question.splitlines()[0] if spec.question else ''}")
        mode = (
            f"search ({spec.search.sampler}, {spec.search.n_trials} trials)"
            if spec.search
            else "grid"
        )
        print(
            f"{mode}: {len(spec.points)} distinct points, {spec.total} trials, spec hash {spec.spec_hash}"
        )
        for p in spec.points:
            print(f"  {p.key}  {describe_point(p.params)}")
        for params, reason in spec.skipped:
            print(f"  skipped  {describe_point(params)}: {reason}")
        return 0
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
