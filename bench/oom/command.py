"""``python -m bench oom``: one run of the OOM search and the planner.

Builds the trial configuration from the flags, checks it against the machine (a
capacity must lie between the probe process's baseline and the device's memory),
searches each capacity, runs the planner for ``--target-batch``, and prints tables or
``--json``. Bad input raises BenchError / ConfigError before any probe runs or any file
is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.config import format_bytes
from bench.errors import BenchError, ConfigError
from bench.oom.arguments import DEFAULT_MAX_STACK, validate_args
from bench.oom.capacity import (
    Boundary,
    CapacityResult,
    find_boundary,
    fitting_row,
    margin_search,
    nothing_fits,
)
from bench.oom.model_search import Line
from bench.oom.output import render
from bench.oom.planner import plan
from bench.oom.probe_spec import SearchSpec, probe_identity, probe_options
from bench.oom.probe_store import ProbeStore
from bench.oom.prober import ProbeFailed, Prober, peak_bytes, searched_value


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress_wanted() -> bool:
    """Progress lines for a person at a terminal; scripts and CI logs get only the
    result (and bad input stays one line on stderr)."""
    return sys.stderr.isatty()


def base_config(args: argparse.Namespace):
    from bench.cli import config_from_args

    # AdamW by default: its optimizer state is part of the memory being measured.
    return config_from_args(
        args, defaults={"optimizer": "adamw"}, required=("workload",), where="oom"
    )


def _dataset_size(config) -> tuple[int, str]:
    """Training-set size and resolved device, found in a child (so this process never
    imports torch or creates a CUDA context); any ConfigError surfaces here."""
    from bench.procs import inspect_config

    return inspect_config(config)


def _check_capacities(capacities: list[int], info: dict, device: str) -> None:
    """Each capacity must hold the baseline and fit in the device: a cap cannot
    emulate more memory than there is."""
    total, baseline = int(info["total_bytes"]), int(info["baseline_bytes"])
    is_cuda = device.startswith("cuda")
    for cap in capacities:
        if cap <= baseline:
            what = (
                "the CUDA context"
                if is_cuda
                else "an idle probe process with torch loaded (VmData)"
            )
            raise BenchError(
                f"--capacity {format_bytes(cap)} is at or below the baseline of {what}: {format_bytes(baseline)}"
            )
        if cap > total:
            raise BenchError(
                f"--capacity {format_bytes(cap)} is more than this {'device' if is_cuda else 'machine'} has ({format_bytes(total)}); a cap cannot emulate more memory"
            )


def _check_stackable(probe) -> None:
    from bench.stack.group import solo_reason

    reason = solo_reason(probe)
    if reason is not None:
        raise BenchError(f"--stack: this configuration cannot train stacked ({reason})")


def _open_store(args: argparse.Namespace, workload: str) -> ProbeStore:
    """The run's probe store, its folder created before any probe: an unusable
    --results is bad input, not a late traceback."""
    name = args.name or workload.replace(":", "-").replace("/", "-")
    store = ProbeStore(Path(args.results) / "oom" / name)
    try:
        store.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--results: cannot create {store.folder}: {exc.strerror or exc}"
        ) from None
    return store


@dataclass
class _Search:
    """One run of the command: its settings, the machine it measured, and its store."""

    args: argparse.Namespace
    spec: SearchSpec
    device: str
    info: dict  # measure_baseline's answer: total_bytes, baseline_bytes, name, ...
    n_train: int
    capped: bool  # --capacity given (else: the device's own memory, no cap)
    store: ProbeStore
    runner: Callable[..., Any] | None

    @property
    def upper(self) -> int:
        max_batch = self.args.max_batch
        if self.spec.stack_batch is not None:  # S is not bounded by the data
            return DEFAULT_MAX_STACK if max_batch is None else max_batch
        return self.n_train if max_batch is None else min(max_batch, self.n_train)

    @property
    def searched(self) -> str:
        """The searched value's name in messages: b, or S for a stack's size."""
        return "b" if self.spec.stack_batch is None else "S"

    def prober(self, cap: int | None, kind: str = "boundary", phase: str = "search") -> Prober:
        """A Prober with the command's settings (timeout, --fresh, progress at a terminal)."""
        if self.spec.stack_batch is not None and kind == "boundary":
            kind = "stack"
        return Prober(
            self.spec,
            cap,
            self.device,
            self.store,
            runner=self.runner,
            ladder_runner=getattr(self.runner, "ladder", None),
            timeout_s=self.args.timeout,
            kind=kind,
            fresh=self.args.fresh,
            log=_progress if _progress_wanted() else None,
            phase=phase,
            margin_pct=self.args.margin if phase == "margin" else None,
        )

    def all_capacities(self, capacities: list[int]) -> tuple[list[CapacityResult], str | None]:
        """Each capacity's result, ascending; a probe that fails for a reason other than
        memory stops the search there (error text), or is bad input at b = 1."""
        results: list[CapacityResult] = []
        for cap in capacities:
            try:
                results.append(self.capacity(cap))
            except ProbeFailed as exc:
                b, outcome, error = searched_value(exc.row), exc.row["outcome"], exc.row["error"]
                at = f"{self.searched}={b}"
                if b == 1:
                    raise BenchError(
                        f"workload {self.spec.base.workload!r} fails at {at} ({outcome}): {error}"
                    ) from None
                return results, f"capacity {format_bytes(cap)}: probe at {at} {outcome}: {error}"
        return results, None

    def capacity(self, cap: int) -> CapacityResult:
        """The boundary under ``cap``, its peak memory, and the safe batch after --margin."""
        # The device's own memory needs no cap: the real limit applies (on CUDA the
        # context then sits inside it, as on any card).
        prober = self.prober(cap if self.capped else None)
        args = self.args
        bound = find_boundary(
            prober,
            start=args.start,
            upper=self.upper,
            tolerance=args.tolerance,
            repeats=args.confirm,
            model_capacity=cap if args.search == "model" else None,
        )
        if bound.boundary == 0:
            raise BenchError(
                f"--capacity {format_bytes(cap)}: workload {self.spec.base.workload!r} runs out of memory even at {self.searched}=1"
            )
        if bound.first_oom is None:
            by_dataset = self.spec.stack_batch is None and (
                args.max_batch is None or self.n_train <= args.max_batch
            )
            bound.limited_by = "dataset" if by_dataset else "max-batch"
        result = CapacityResult(cap, self.capped, bound, args.margin)
        result.peak_at_boundary_bytes = peak_bytes(fitting_row(prober.rows, bound.boundary))
        if args.margin > 0:
            result.margin_capacity_bytes = int(cap * (1 - args.margin / 100))
            result.safe = self.margin(result.margin_capacity_bytes, bound)
        return result

    def margin(self, cap: int, raw: Boundary) -> Boundary:
        if cap <= int(self.info["baseline_bytes"]):
            return nothing_fits()
        model = raw.model or {}
        line = None
        if model.get("anchor") and model.get("line_slope"):
            line = Line(model["line_slope"], tuple(model["anchor"]))
        return margin_search(
            self.prober(cap, phase="margin"),
            raw_boundary=raw.boundary,
            margin_pct=self.args.margin,
            upper=self.upper,
            tolerance=self.args.tolerance,
            repeats=self.args.confirm,
            line=line,
        )

    def summary(self, results: list[CapacityResult], error: str | None, wall_s: float) -> dict:
        """The command's result: printed as JSON with --json, else through render()."""
        args, base, is_cuda = self.args, self.spec.base, self.device.startswith("cuda")
        cap_method = ("cuda-memory-fraction" if is_cuda else "rlimit-data") if self.capped else None
        return {
            "workload": base.workload,
            "workload_options": dict(probe_options(base, True)),
            "precision": base.precision,
            "optimizer": base.optimizer,
            "device": self.device,
            "device_name": self.info.get("name"),
            "steps_per_probe": args.steps,
            "evaluation": not args.no_eval,
            "cap_method": cap_method or "none (device's own memory)",
            "baseline_bytes": int(self.info["baseline_bytes"]),
            "total_bytes": int(self.info["total_bytes"]),
            "dataset_size": self.n_train,
            "tolerance": args.tolerance,
            "confirm": args.confirm,
            "search": args.search,
            "probes_path": str(self.store.path),
            "capacities": [r.to_dict() for r in results],
            "target_batch": args.target_batch,
            "stack_batch": self.spec.stack_batch,
            "wall_s": round(wall_s, 3),
            "error": error,
        }


def main(args: argparse.Namespace, *, runner=None) -> int:
    from bench.config import parse_size
    from bench.meters import check_environment
    from bench.procs import measure_baseline

    t_start = time.perf_counter()
    validate_args(args)
    check_environment()  # every probe child would fail on the same typo
    base = base_config(args)
    spec = SearchSpec(
        base=base, steps=args.steps, evaluate=not args.no_eval, stack_batch=args.stack
    )
    probe = spec.probe_config(args.stack or 1)  # validates the probe config (precision, ...)
    capacities = [parse_size(c, key="--capacity") for c in args.capacity]
    if args.stack is not None:
        _check_stackable(probe)

    n_train, device = _dataset_size(probe)
    info = measure_baseline(device)
    spec = replace(spec, identity=probe_identity(info, base.workload))
    capped = bool(capacities)
    capacities = capacities or [int(info["total_bytes"])]
    _check_capacities(capacities, info, device)
    if args.target_batch is not None and args.target_batch > n_train:
        raise BenchError(
            f"--target-batch {args.target_batch} exceeds the training set ({n_train} samples): "
            "no window of b*k samples fits in an epoch"
        )
    store = _open_store(args, base.workload)
    run = _Search(args, spec, device, info, n_train, capped, store, runner)

    results, error = run.all_capacities(sorted(set(capacities)))
    if error is None and args.target_batch is not None:
        plan(
            results,
            target=args.target_batch,
            candidates=args.candidates,
            throughput_steps=args.throughput_steps,
            rounds=args.throughput_rounds,
            make_prober=lambda cap: run.prober(cap, kind="throughput", phase="throughput"),
        )
    out = run.summary(results, error, time.perf_counter() - t_start)
    print(json.dumps(out, indent=2, default=str) if args.json else render(out))
    if error is not None:
        print(f"bench: search stopped: {error}", file=sys.stderr)
        return 1
    return 0
