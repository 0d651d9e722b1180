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

``--defaults`` measures the defaults instead: for each ``--spec`` (seed.toml and
smoke.toml unless given), the command with no ``--workers/--threads`` against each
hand-chosen ``--workers W --threads T`` of ``--choices`` (interleaved, repeated), and
prints two ratios per spec (medians): default wall / best hand-chosen wall (goal
<= 1.2), and the default's (wall - worker start-up) / (sum of its trials' in-worker
wall times / workers) (goal <= 1.2). ``--repo DIR`` runs another source tree (an
earlier commit, unpacked with ``git archive``) for a before/after comparison.
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


def summary_of(flags: list[str], spec: Path, repo: Path = REPO) -> tuple[dict, float]:
    """Run ``bench sweep SPEC FLAGS`` from ``repo`` into a fresh folder: its summary, and
    the command's wall time from process start (imports and spec loading included)."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-overhead-") as tmp:
        env = {**os.environ, "BENCH_SWEEP_SUMMARY": "1", "PYTHONPATH": str(repo)}
        cmd = [sys.executable, "-m", "bench.sweep", str(spec), *flags, "--results", tmp]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=600)
        command_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        line = next(x for x in proc.stderr.splitlines() if x.startswith("BENCH_SWEEP_SUMMARY "))
        return json.loads(line.split(" ", 1)[1]), command_s


def run_once(spec: Path, workers: int) -> dict:
    s, _ = summary_of(["--workers", str(workers)], spec)
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


def defaults(specs: list[Path], choices: list[str], repeats: int, repo: Path) -> int:
    """Default flags against hand-chosen ones: the two ratios of the module docstring."""
    variants = [("default", [])] + [
        (c, ["--workers", c.split("x")[0], "--threads", c.split("x")[1]]) for c in choices
    ]
    loads = []
    for spec in specs:
        walls: dict[str, list[float]] = {name: [] for name, _ in variants}
        startups: dict[str, list[float]] = {name: [] for name, _ in variants}
        fits: list[float] = []
        for i in range(repeats):
            for name, flags in variants:  # interleaved
                s, command_s = summary_of(flags, spec, repo)
                walls[name].append(command_s)
                loads.append(os.getloadavg()[0])
                if name == "default":
                    workers = s.get("workers") or 1  # summaries before the field: 1
                    fits.append((s["wall_s"] - s["startup_s"]) / (s["worker_busy_s"] / workers))
                # From the command's start until its first worker was ready (the time
                # after the sweep, the command's exit, counts in too: it is not reported).
                startups[name].append(command_s - s["wall_s"] + s["startup_s"])
                print(f"{spec.name} rep {i + 1} {name:8s} command {command_s:6.2f} s, sweep "
                      f"{s['wall_s']:6.2f} s, start-up {s['startup_s']:5.2f} s in the sweep, "
                      f"{startups[name][-1]:5.2f} s from the command's start, trials in "
                      f"workers {s['worker_busy_s']:6.2f} s (load {loads[-1]:.1f})", flush=True)  # fmt: skip
        medians = {name: statistics.median(v) for name, v in walls.items()}
        best = min((n for n in medians if n != "default"), key=medians.get)
        print(f"\n{spec.name}: command wall medians " + ", ".join(
            f"{n} {v:.2f} s" for n, v in medians.items()))  # fmt: skip
        print("  start-up from the command's start, medians: " + ", ".join(
            f"{n} {statistics.median(v):.2f} s" for n, v in startups.items()))  # fmt: skip
        print(f"  default / best hand-chosen ({best}): {medians['default'] / medians[best]:.2f} "
              f"(goal <= 1.2)")  # fmt: skip
        print(f"  (sweep wall - start-up) / (trial walls / workers): median "
              f"{statistics.median(fits):.2f} (min {min(fits):.2f}, max {max(fits):.2f}; goal <= 1.2)")  # fmt: skip
    print(f"\n{repeats} repetitions, {os.cpu_count()} CPUs, 1-min load average median "
          f"{statistics.median(loads):.1f} (min {min(loads):.1f}, max {max(loads):.1f}); "
          f"source {repo}")  # fmt: skip
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--defaults", action="store_true", help="measure the default flags")
    p.add_argument("--choices", nargs="+", default=["1x1", "2x1", "1x2"], metavar="WxT")
    p.add_argument("--repo", type=Path, default=REPO, help="source tree to run")
    args = p.parse_args()
    if args.defaults:
        specs = args.spec or [REPO / "experiments" / n for n in ("seed.toml", "smoke.toml")]
        return defaults([s.resolve() for s in specs], args.choices, args.repeats, args.repo)
    args.spec = (args.spec or [REPO / "experiments" / "smoke.toml"])[0]
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
