"""Whole sweeps, solo against stacked: an 8 lr x 8 seed grid (64 configurations) at b = 32.

    python scripts/bench_stack.py [--repeats 3] [--workers 2] [--threads 1] [--device cpu]
                                  [--epochs 1 [16 ...]] [--before TREE] [--in-process]

For each workload (seed-mlp at its default N = 10000, teacher-mlp at N = 8192) and each
length (``--epochs``, default one epoch), the same spec runs as ``execution = "solo"`` and as ``execution = "stacked"``
(``max_stack = 64``), each a fresh ``python -m bench sweep`` into a new results folder:
records written, study told, exactly what a user runs. The variants are interleaved
(solo, stacked, solo, stacked, ...) so a change in machine load hits both alike. It
prints each run's wall time, then per workload the solo / stacked wall-time ratio over
the repetitions (each repetition's pair gives one ratio): median, min and max, with the
1-minute load average, and the median start-up: from the command's start until its first
worker was ready (the sweep's own ``BENCH_SWEEP_SUMMARY`` plus the command's time before
the sweep began). ``--steps-check`` also reports the largest relative difference
between a stacked member's per-step losses and its solo run's.

``--in-process`` measures the training alone, without a sweep's start-up, claims and
recording: in one process with one torch thread, ``bench.stack.run_stack`` of the S
configurations (S = 64 / --workers, one worker's stack) against ``bench.trial.run_trial``
of 8 of them, interleaved, and prints the ratio of the solo time per configuration x S
to the stack's time (median, min, max over the repetitions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LRS = [0.003 * 2**i for i in range(8)]  # 0.003 .. 0.384

SPEC = """\
# Solo against stacked: an 8 lr x 8 seed grid at b = 32, one epoch.
name = "{name}"
device = "{device}"
seeds = 8
execution = "{execution}"
max_stack = 64

[workload]
name = "{workload}"

[base]
batch_size = 32
epochs = {epochs}

[grid]
lr = {lrs}
"""


def write_spec(folder: Path, workload: str, execution: str, device: str, epochs: int) -> Path:
    name = f"{workload}-{execution}-e{epochs}"
    path = folder / f"{name}.toml"
    lrs = "[" + ", ".join(f"{lr:.6g}" for lr in LRS) + "]"
    path.write_text(
        SPEC.format(
            name=name,
            device=device,
            execution=execution,
            workload=workload,
            lrs=lrs,
            epochs=epochs,
        )  # fmt: skip
    )
    return path


def run_sweep(
    spec: Path, results: Path, workers: int, threads: int | None, repo: Path = REPO
) -> tuple[float, dict]:
    """(command wall, the sweep's own summary: ``startup_s`` until its first worker was
    ready, ``wall_s`` of the sweep inside the command)."""
    cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--workers", str(workers)]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += ["--results", str(results)]
    env = {**os.environ, "PYTHONPATH": str(repo), "BENCH_SWEEP_SUMMARY": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stderr.splitlines() if x.startswith("BENCH_SWEEP_SUMMARY "))
    return wall, json.loads(line.split(" ", 1)[1])


def loss_difference(solo: Path, stacked: Path) -> float:
    """The largest relative difference of a step's loss, stacked member against solo run."""
    import numpy as np

    from bench.store import load_results

    a, b = load_results(solo).steps, load_results(stacked).steps
    m = a.merge(b, on=["trial_key", "step"], suffixes=("_solo", "_stack"))
    finite = np.isfinite(m["loss_solo"]) & np.isfinite(m["loss_stack"])
    rel = (m["loss_stack"] - m["loss_solo"]).abs() / m["loss_solo"].abs()
    return float(rel[finite].max())


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def in_process(args: argparse.Namespace) -> None:
    """The training alone: run_stack against run_trial in one process, one thread."""
    import torch

    from bench.config import TrialConfig
    from bench.stack.trial import run_stack
    from bench.trial import run_trial

    torch.set_num_threads(1)
    size = 64 // args.workers
    for workload in args.workloads:
        for epochs in args.epochs:
            configs = [
                TrialConfig(workload=workload, batch_size=32, epochs=epochs, device=args.device,
                            lr=LRS[i % 8], seed=i // 8)
                for i in range(size)
            ]  # fmt: skip
            run_stack(configs[:2])  # warm: first calls load code
            run_trial(configs[0])
            stacked, solo = [], []
            for _ in range(args.repeats):  # interleaved
                t0 = time.perf_counter()
                run_stack(configs)
                stacked.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for c in configs[:8]:
                    run_trial(c)
                solo.append((time.perf_counter() - t0) / 8 * size)
            ratios = [a / b for a, b in zip(solo, stacked, strict=True)]
            print(f"{workload:12s} E={epochs:<3d} S={size}: stack {stats(stacked)} s, solo x S "
                  f"{stats(solo)} s, ratio {stats(ratios)}x (load {os.getloadavg()[0]:.1f})",
                  flush=True)  # fmt: skip


def sweeps(args: argparse.Namespace) -> None:
    """Whole sweeps, solo and stacked (and stacked@before), interleaved."""
    walls: dict[tuple, list[float]] = {}
    startups: dict[tuple, list[float]] = {}
    loads: list[float] = []
    cases = [(w, e) for w in args.workloads for e in args.epochs]
    variants = ["solo", "stacked"] + (["stacked@before"] if args.before else [])
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        root = Path(tmp)
        for i in range(args.repeats):
            for workload, epochs in cases:
                for execution in variants:  # interleaved
                    kind, _, tree = execution.partition("@")
                    spec = write_spec(root, workload, kind, args.device, epochs)
                    results = root / f"r{i}-{spec.stem}{tree}"
                    repo = args.before.resolve() if tree else REPO
                    wall, summary = run_sweep(spec, results, args.workers, args.threads, repo)
                    key = (workload, epochs, execution)
                    walls.setdefault(key, []).append(wall)
                    startups.setdefault(key, []).append(
                        summary["startup_s"] + wall - summary["wall_s"]
                    )
                    loads.append(os.getloadavg()[0])
                    print(f"rep {i + 1} {workload:12s} E={epochs:<3d} {execution:8s} wall {wall:7.2f} s, "
                          f"start-up {startups[key][-1]:5.2f} s (load {loads[-1]:.1f})", flush=True)  # fmt: skip
                if args.steps_check and i == 0:
                    solo, stacked = (f"{workload}-{k}-e{epochs}" for k in ("solo", "stacked"))
                    diff = loss_difference(
                        root / f"r0-{solo}" / solo, root / f"r0-{stacked}" / stacked
                    )
                    print(f"  {workload}: largest per-step loss difference {diff:.2e} relative")
    print(
        f"\n64 configurations (8 lr x 8 seeds), b = 32, {args.repeats} repetitions, "
        f"--workers {args.workers} --threads {args.threads}, device {args.device}; "
        f"{os.cpu_count()} CPUs, 1-min load average median {statistics.median(loads):.1f} "
        f"(min {min(loads):.1f}, max {max(loads):.1f})"
    )
    for (workload, epochs, variant), w in walls.items():
        after = [a - b for a, b in zip(w, startups[(workload, epochs, variant)], strict=True)]
        print(f"{workload:12s} E={epochs:<3d} {variant:15s} wall {stats(w)} s, start-up "
              f"{statistics.median(startups[(workload, epochs, variant)]):.2f} s, "
              f"after start-up {stats(after)} s")  # fmt: skip
    for workload, epochs in cases:
        solo, stacked = walls[(workload, epochs, "solo")], walls[(workload, epochs, "stacked")]
        ratios = [a / b for a, b in zip(solo, stacked, strict=True)]
        print(f"{workload:12s} E={epochs:<3d} solo / stacked, whole sweeps: {stats(ratios)}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workloads", nargs="+", default=["seed-mlp", "teacher-mlp"])
    p.add_argument("--epochs", nargs="+", type=int, default=[1])
    p.add_argument("--steps-check", action="store_true")
    p.add_argument("--in-process", action="store_true")
    p.add_argument(
        "--before",
        type=Path,
        help="another tree (e.g. from git archive): its stacked sweep runs as a third "
        "interleaved variant, 'stacked@before', for a before/after comparison",
    )
    args = p.parse_args()
    if args.in_process:
        in_process(args)
    else:
        sweeps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
