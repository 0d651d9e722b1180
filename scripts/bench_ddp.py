#!/usr/bin/env python3
"""What does all-reducing once per window (``no_sync``) save over every micro-batch?

Two gloo ranks on this machine's loopback, one torch thread each, train the same
configuration with ``sync = "window"`` and ``sync = "every"`` for each accumulation k,
and a 1-process run of micro-batch b*2 on one thread as a reference (the same samples
per step, no communication, half the cores). Variants run interleaved, in a rotating order so drift from the other
load on the machine spreads over all of them, ``--repeats`` times.

Per variant: median step time (each trial's median, robust to bursts of load from
other processes), total samples/s (rank 0's step clock over the steps after the timing
warm-up, all ranks' samples), all-reduce calls and bytes per optimizer step (counted by
the DDP communication hook), and all-reduce time per step (launch to completion, summed
over the buckets; it overlaps the backward). Reported as median [min, max] over the
rounds, with the every / window step-time ratio per round, and the 1-minute load
average before and after.

    python scripts/bench_ddp.py                     # k = 1 2 4 8, 5 rounds
    python scripts/bench_ddp.py --k 8 --repeats 3 --width 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Before torch loads (here and in the forkserver the ranks come from): OpenMP threads that
# spin while they wait are pathological on a shared CPU (bench.sweep.pool says more).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench.config import TrialConfig  # noqa: E402
from bench.trial import run_trial  # noqa: E402


def _config(args: argparse.Namespace, k: int, variant: str) -> TrialConfig:
    base = TrialConfig(
        workload="teacher-mlp",
        workload_options={"width": args.width, "depth": args.depth},
        samples=args.samples,
        batch_size=args.batch_size,
        accumulation_steps=k,
        epochs=args.epochs,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        device="cpu",
        eval_every=0,
        timing_warmup_steps=2,
    )
    if variant == "1 process":
        return base.replace(batch_size=args.batch_size * 2)
    return base.replace(nproc=2, sync=variant)


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.4g} [{min(values):.4g}, {max(values):.4g}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=2)
    args = p.parse_args()
    # 2 threads here: bench gives each of the 2 ranks half, 1 thread each.
    variants = ["window", "every", "1 process"]
    threads = {"window": 2, "every": 2, "1 process": 1}
    load_before = os.getloadavg()[0]
    rows: dict[tuple[int, str], list[dict]] = {}
    for round_ in range(args.repeats):
        for k in args.k:
            shift = (round_ + k) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                torch.set_num_threads(threads[variant])
                t = run_trial(_config(args, k, variant)).trial
                if t["status"] != "ok":
                    print(f"k={k} {variant}: {t['status']} {t['error']}", file=sys.stderr)
                    return 1
                rows.setdefault((k, variant), []).append(t)
        print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr)
    load_after = os.getloadavg()[0]
    print(
        f"teacher-mlp width {args.width} depth {args.depth}, N={args.samples}, b={args.batch_size} "
        f"per rank, {args.epochs} epochs, {args.repeats} rounds; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after"
    )
    print()
    print(
        "| k | sync | step ms (median) | samples/s (total) | all-reduces / step | KiB / step "
        "| all-reduce ms / step | every / window step time |"
    )
    print("| ---: | --- | --- | --- | ---: | ---: | --- | --- |")
    for k in args.k:
        window = [t["step_time_ms_median"] for t in rows[(k, "window")]]
        every = [t["step_time_ms_median"] for t in rows[(k, "every")]]
        ratios = [e / w for w, e in zip(window, every, strict=True)]
        for variant in variants:
            trials = rows[(k, variant)]
            rates = [t["samples_per_s"] for t in trials]
            step_ms = [t["step_time_ms_median"] for t in trials]
            if variant == "1 process":
                calls = size = comm = "-"
            else:
                steps = trials[0]["optimizer_steps"]
                calls = f"{trials[0]['allreduce_calls'] / steps:g}"
                size = f"{trials[0]['allreduce_bytes'] / steps / 1024:.0f}"
                comm = _summary([t["allreduce_time_s"] / steps * 1e3 for t in trials])
            ratio = _summary(ratios) if variant == "window" else ""
            print(
                f"| {k} | {variant} | {_summary(step_ms)} | {_summary(rates)} | {calls} | {size} "
                f"| {comm} | {ratio} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
