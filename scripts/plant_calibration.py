#!/usr/bin/env python3
"""Does a planted ``step_slowdown`` slow the step by what it says? ``bench run`` of
seed-mlp at each planted level against ``step_slowdown = 0`` (the same timing, no wait),
levels interleaved in a rotating order, several rounds; per round the level's step time
(and samples/s) over the round's level-0 run; medians over rounds with their range.

    python scripts/plant_calibration.py                        # b = 1 and 8x4, 8 rounds
    python scripts/plant_calibration.py --rounds 4 --levels 0.1 --configs 1x1

Target: every level's median within 2 points of the planted one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def one_run(out: Path, level: float, batch: int, accumulation: int, samples: int) -> dict:
    """step_time_ms_median and samples_per_s of one ``bench run``."""
    cmd = [sys.executable, "-m", "bench", "run", "--device", "cpu", "--batch-size", str(batch),
           "--accumulation-steps", str(accumulation), "--samples", str(samples),
           "--option", f"step_slowdown={level}", "--out", str(out)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"plant_calibration: bench run failed: {done.stderr.strip()[-500:]}")
    row = pq.read_table(out / "trial.parquet").to_pylist()[0]
    return {k: row[k] for k in ("step_time_ms_median", "samples_per_s")}


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med - 1:+.1%} ({min(values) - 1:+.1%} .. {max(values) - 1:+.1%})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--configs", nargs="+", default=["1x1", "8x4"], help="BxK")
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args(argv)
    try:
        configs = [tuple(int(v) for v in c.split("x")) for c in args.configs]
    except ValueError:
        parser.error(f"--configs takes BxK, e.g. 8x4, got {args.configs}")
    levels = [0.0, *args.levels]
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    print("| b×k | planted | step time (median over rounds, min .. max) | samples/s |")
    print("| --- | --: | --: | --: |")
    with tempfile.TemporaryDirectory(prefix="plant-calibration-") as tmp:
        for batch, acc in configs:
            ratios: dict[float, dict[str, list[float]]] = {lv: {} for lv in args.levels}
            for r in range(args.rounds):
                order = levels[r % len(levels) :] + levels[: r % len(levels)]
                got = {
                    lv: one_run(Path(tmp) / f"{batch}x{acc}-{lv}-{r}", lv, batch, acc, args.samples)
                    for lv in order
                }
                for lv in args.levels:
                    for key in ("step_time_ms_median", "samples_per_s"):
                        ratio = got[lv][key] / got[0.0][key]
                        ratios[lv].setdefault(key, []).append(
                            ratio if key.startswith("step") else 1 / ratio
                        )
            for lv in args.levels:
                print(
                    f"| {batch}×{acc} | {lv:.0%} | {spread(ratios[lv]['step_time_ms_median'])} "
                    f"| {spread(ratios[lv]['samples_per_s'])} |",
                    flush=True,
                )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
