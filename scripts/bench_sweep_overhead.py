"""Sweep overhead per trial: what the sweep machinery costs on top of training.

    python scripts/bench_sweep_overhead.py [--spec experiments/smoke.toml] [--repeats 5]

Each repetition runs the spec from scratch in a fresh process (``python -m bench.sweep``,
a new results folder) and reads the summary it prints (``BENCH_SWEEP_SUMMARY``). For
``--workers 1`` and ``--workers 2``, interleaved (1, 2, 1, 2, ...) so that a change in
machine load hits both alike, it reports medians and spread of:

- overhead per trial, warm workers: (wall - worker startup - sum of train_time_s) / trials
  with workers = 1; with W workers the trials overlap, so it is W * (wall - startup) minus
  the summed train time, per trial (the worker-seconds not spent training);
- of which in the worker: (dispatch-to-reply time - train_time_s) per trial (building
  the workload, FLOP count, meters, pickling the result);
- worker startup (forkserver + first worker ready) and total wall time.

The target: overhead per trial under 150 ms on CPU for smoke.toml.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(spec: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-overhead-") as tmp:
        env = {**os.environ, "BENCH_SWEEP_SUMMARY": "1", "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.sweep",
                str(spec),
                "--workers",
                str(workers),
                "--results",
                tmp,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=600,
        )
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        line = next(x for x in proc.stderr.splitlines() if x.startswith("BENCH_SWEEP_SUMMARY "))
        s = json.loads(line.split(" ", 1)[1])
    n = s["ran_here"]
    loop = s["wall_s"] - s["startup_s"]
    return {
        "workers": workers,
        "trials": n,
        "wall_s": s["wall_s"],
        "startup_s": s["startup_s"],
        "train_s": s["train_time_here_s"],
        "overhead_ms_per_trial": 1e3 * (workers * loop - s["train_time_here_s"]) / n,
        "in_worker_ms_per_trial": 1e3 * (s["worker_busy_s"] - s["train_time_here_s"]) / n,
    }


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return (
            f"median {med:8.1f}  IQR {q3 - q1:7.1f}  min {min(values):8.1f}  max {max(values):8.1f}"
        )
    return f"median {med:8.1f}  min {min(values):8.1f}  max {max(values):8.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, default=REPO / "experiments" / "smoke.toml")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    for i in range(args.repeats):
        for w in args.workers:  # interleaved
            r = run_once(args.spec, w)
            runs[w].append(r)
            print(
                f"rep {i + 1} workers={w}: overhead {r['overhead_ms_per_trial']:.1f} ms/trial "
                f"(in worker {r['in_worker_ms_per_trial']:.1f}), startup {r['startup_s']:.2f} s, "
                f"wall {r['wall_s']:.2f} s, train {r['train_s']:.2f} s",
                flush=True,
            )
    print(
        f"\n{args.spec.name}: {runs[args.workers[0]][0]['trials']} trials, {args.repeats} repetitions, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for w, rs in runs.items():
        print(f"workers={w}")
        print(f"  overhead per trial, ms       {spread([r['overhead_ms_per_trial'] for r in rs])}")
        print(f"    of which in the worker, ms {spread([r['in_worker_ms_per_trial'] for r in rs])}")
        print(f"  worker startup, s            {spread([r['startup_s'] for r in rs])}")
        print(f"  wall, s                      {spread([r['wall_s'] for r in rs])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
