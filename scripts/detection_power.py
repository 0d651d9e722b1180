#!/usr/bin/env python3
"""How large a slowdown does ``nox -s compare`` detect on this machine? Plants slowdowns
of known size and runs the A/B N times at each level.

A planted level is a commit, in a scratch clone of this repository, that sets seed-mlp's
``step_slowdown`` default (each training micro-batch busy-waits that fraction of its
measured cycle): a code change, so configurations and trial keys stay as they were and
bench compare matches them as it would a real regression. At each level the script runs
scripts/compare_ab.py (base: this commit, candidate: the planted one) N times and prints
the share of runs that call at least one row ``regressed`` (at 0 %: the false-alarm
rate) and the median step-time ratio the runs measured.

    python scripts/detection_power.py --runs 5                 # levels 0 5 10 20 %
    python scripts/detection_power.py --runs 3 --rounds 4 --levels 0 20 -- --threshold 10%
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "step_slowdown: float = 0.0"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"detection_power: git {args[0]}: {done.stderr.strip()}")
    return done.stdout.strip()


def planted_clone(where: Path, percent: float) -> Path:
    """A clone of HEAD with one commit on top that plants ``percent`` % (none at 0)."""
    clone = where / f"plant-{percent:g}"
    git(ROOT, "clone", "-q", "--no-hardlinks", str(ROOT), str(clone))
    mlp = clone / "bench" / "workloads" / "seed_mlp.py"
    text = mlp.read_text(encoding="utf-8")
    if DEFAULT not in text:
        raise SystemExit(f"detection_power: {DEFAULT!r} is not in bench/workloads/seed_mlp.py")
    mlp.write_text(text.replace(DEFAULT, f"step_slowdown: float = {percent / 100}"))
    git(clone, "commit", "-qam", f"plant {percent:g} % step slowdown", "--allow-empty")
    return clone


def one_compare(clone: Path, out: Path, rounds: int, compare_args: list[str]) -> tuple[int, float]:
    """compare_ab's exit status and the median step_time_ms_median ratio of its rows."""
    done = subprocess.run(
        [sys.executable, "scripts/compare_ab.py", "--base", "HEAD~1", "--rounds", str(rounds),
         "--out", str(out), "--", "--metrics", "step_time_ms_median", *compare_args],
        cwd=clone, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(
            f"detection_power: compare_ab exit {done.returncode}: {done.stderr[-2000:]}"
        )
    ratios = [
        float(r)
        for r in re.findall(r"\| step_time_ms_median \|[^|]*\|[^|]*\| ([\d.]+) ", done.stdout)
    ]
    return done.returncode, statistics.median(ratios) if ratios else float("nan")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    compare_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="compares per level (default 5)")
    parser.add_argument("--rounds", type=int, default=6, help="compare_ab rounds (default 6)")
    parser.add_argument(
        "--levels", type=float, nargs="+", default=[0, 5, 10, 20], help="planted slowdowns, %%"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 2 or any(p < 0 or p > 1000 for p in args.levels):
        parser.error("--runs >= 1, --rounds >= 2, levels in [0, 1000]")
    print("| planted | runs | called regressed | median step-time ratio |")
    print("| --: | --: | --: | --: |", flush=True)
    with tempfile.TemporaryDirectory(prefix="detection-power-") as tmp:
        for percent in args.levels:
            clone = planted_clone(Path(tmp), percent)
            t0, codes, ratios = time.monotonic(), [], []
            for run in range(args.runs):
                code, ratio = one_compare(
                    clone, Path(tmp) / f"out-{percent:g}-{run}", args.rounds, compare_args
                )
                codes.append(code)
                ratios.append(ratio)
            called = sum(c == 1 for c in codes)
            print(
                f"| {percent:g} % | {args.runs} | {called}/{args.runs} ({called / args.runs:.0%}) "
                f"| {statistics.median(ratios):.3f} |  <!-- {time.monotonic() - t0:.0f} s -->",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
