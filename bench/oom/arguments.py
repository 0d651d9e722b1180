"""``bench oom``'s flags: declared for argparse, and checked before anything runs.

A bad value raises BenchError with one line naming the flag, the value and what is
accepted (the command line prints it and exits 2).
"""

from __future__ import annotations

import argparse
import math

from bench.errors import BenchError

DEFAULT_MARGIN_PCT = 10.0
DEFAULT_MAX_STACK = 4096  # --stack: the largest S tried without --max-batch


def add_arguments(p: argparse.ArgumentParser) -> None:
    _probed_arguments(p.add_argument_group("what is probed"))
    _search_arguments(p.add_argument_group("search"))
    _planner_arguments(p.add_argument_group("planner"))
    _output_arguments(p.add_argument_group("output"))


def _probed_arguments(g) -> None:
    g.add_argument("--workload", help="workload name (or module:function)")
    g.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="workload option (repeatable)",
    )
    g.add_argument(
        "--config",
        metavar="TOML",
        help="a trial config to start from (its batch settings are ignored)",
    )
    g.add_argument(
        "--precision", help="fp32 / bf16 / fp16 / fp64 (default: the config's, else fp32)"
    )
    g.add_argument(
        "--optimizer", help="sgd / adamw (default adamw: its state is part of the memory)"
    )
    g.add_argument(
        "--samples", type=int, metavar="N", help="training-set size (the search stops there)"
    )
    g.add_argument("--device", help="auto / cpu / cuda / cuda:N (default auto)")
    g.add_argument(
        "--steps", type=int, default=3, metavar="N", help="optimizer steps per probe (default 3)"
    )
    g.add_argument("--no-eval", action="store_true", help="probe without the evaluation pass")
    g.add_argument(
        "--stack",
        type=int,
        metavar="B",
        help="search the stack size S instead of b: the most configurations that train "
        'together as one stack (execution = "stacked") at micro-batch B; --start and '
        f"--max-batch then bound S (default {DEFAULT_MAX_STACK})",
    )


def _search_arguments(g) -> None:
    g.add_argument(
        "--capacity",
        action="append",
        default=[],
        metavar="SIZE",
        help="memory capacity, e.g. 16GiB (repeatable; default: the device's own)",
    )
    g.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN_PCT,
        metavar="PCT",
        help=f"safety margin, %% of capacity, in [0, 50) (default {DEFAULT_MARGIN_PCT:g})",
    )
    g.add_argument("--max-batch", type=int, metavar="B", help="largest b to try")
    g.add_argument(
        "--start",
        type=int,
        default=1,
        metavar="B",
        help="first b tried; doubling starts here (default 1)",
    )
    g.add_argument(
        "--tolerance",
        type=int,
        default=1,
        metavar="T",
        help="stop bisecting when fit and OOM are T apart (default 1: exact)",
    )
    g.add_argument(
        "--search",
        choices=("bisect", "model"),
        default="bisect",
        help="bisect: double from --start, then bisect; model: fit memory = M0 + m*b on a "
        "few probes, predict b*, search from there (default bisect)",
    )
    g.add_argument(
        "--confirm",
        type=int,
        default=3,
        metavar="R",
        help="runs of the last fit and the first OOM: b* is reported only when it fit R of R "
        "and b*+1 failed R of R, else the band between (default 3; 1: no confirmation)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds per probe before it is killed (a failure)",
    )


def _planner_arguments(g) -> None:
    g.add_argument(
        "--target-batch",
        type=int,
        metavar="B",
        help="also recommend the fastest (b, k) with b*k = B",
    )
    g.add_argument(
        "--candidates",
        type=int,
        default=6,
        metavar="C",
        help="measure the C largest fitting divisors of B (default 6)",
    )
    g.add_argument(
        "--throughput-steps",
        type=int,
        default=6,
        metavar="S",
        help="timed optimizer steps per candidate, after 2 warm-up steps (default 6)",
    )
    g.add_argument(
        "--throughput-rounds",
        type=int,
        default=3,
        metavar="N",
        help="interleaved timing rounds per candidate, without the cap; ranked by the "
        "median (default 3)",
    )


def _output_arguments(g) -> None:
    g.add_argument(
        "--results", default="results", metavar="DIR", help="results root (default results)"
    )
    g.add_argument(
        "--name", help="run name: probes go to DIR/oom/NAME/probes.parquet (default: the workload)"
    )
    g.add_argument("--json", action="store_true", help="print JSON instead of tables")
    g.add_argument(
        "--fresh",
        action="store_true",
        help="run every probe again, even those stored (they are kept; the new ones win)",
    )


def validate_args(args: argparse.Namespace) -> None:
    if not (0 <= args.margin < 50) or math.isnan(args.margin):
        raise BenchError(f"--margin must be a percentage in [0, 50), got {args.margin:g}")
    for flag, value, minimum in (
        ("--steps", args.steps, 1),
        ("--max-batch", args.max_batch, 1),
        ("--start", args.start, 1),
        ("--tolerance", args.tolerance, 1),
        ("--confirm", args.confirm, 1),
        ("--target-batch", args.target_batch, 1),
        ("--candidates", args.candidates, 1),
        ("--throughput-steps", args.throughput_steps, 1),
        ("--throughput-rounds", args.throughput_rounds, 1),
        ("--stack", args.stack, 1),
    ):
        if value is not None and value < minimum:
            raise BenchError(f"{flag} must be an integer >= {minimum}, got {value}")
    if args.stack is not None and args.search == "model":
        raise BenchError("--stack searches by bisection: --search model fits a line over b")
    if args.stack is not None and args.target_batch is not None:
        raise BenchError("--stack and --target-batch: the planner splits a batch, not a stack")
    if args.timeout is not None and not args.timeout > 0:
        raise BenchError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")):
        raise BenchError(f"--name must be a plain folder name, got {args.name!r}")
