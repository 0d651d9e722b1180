#!/usr/bin/env python3
"""How large a change does ``nox -s compare`` detect on this machine? Plants
regressions of known size and runs the A/B N times at each level.

A planted level is two commits, in a scratch clone of this repository's HEAD, that set
one of seed-mlp's planting options' default (bench/workloads/planted.py): a code change,
so configurations and trial keys stay as they were and bench compare matches them as it
would a real regression. ``--plant slowdown``: ``step_slowdown`` (each training
micro-batch busy-waits that fraction of its measured cycle; the baseline commit sets 0,
the same timing without a wait); ``memory``: ``extra_memory_bytes`` (MiB held during
training); ``loss``: ``loss_change`` (every reported loss that much higher, the same
training). The script runs scripts/compare_ab.py (base: the baseline commit, candidate:
the planted one) N times at each level, levels interleaved, and prints the share of runs
that call a row ``regressed`` (what fails CI; at level 0 the false-alarm rate), the share
with a row of the planted metric called, and that metric's median ratio.

    python scripts/detection_power.py --runs 8                 # slowdowns of 0 5 10 20 %
    python scripts/detection_power.py --plant memory --runs 2  # 0 8 16 32 MiB
    python scripts/detection_power.py --runs 3 --rounds 4 --levels 0 20 -- --threshold 10%
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLP = Path("bench") / "workloads" / "declared.py"  # seed-mlp options and defaults


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost",
         *args],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"detection_power: git {args[0]}: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Plant:
    """A regression planted by changing one seed-mlp option's default (in the source, so
    configurations and trial keys stay as they were): the baseline commit's default and
    the planted commit's, from the level; the metric it moves; the level's unit."""

    option: str
    default: str  # the default as written in declared.py (seed_mlp)
    base: str  # what the baseline commit writes there (the default itself: no change)
    metric: str
    unit: str
    scale: float  # the option's value per unit of level

    def value(self, level: float) -> str:
        v = level * self.scale
        return repr(int(v)) if self.option == "extra_memory_bytes" else repr(v)


PLANTS = {
    # The baseline of a planted slowdown times the step as the planted side does and
    # waits nothing (step_slowdown = 0): the two sides differ by the wait alone.
    "slowdown": Plant("step_slowdown", "None", "0.0", "step_time_ms_median", "%", 0.01),
    "memory": Plant("extra_memory_bytes", "0", "0", "peak_memory_bytes", " MiB", 2**20),
    "loss": Plant("loss_change", "None", "0.0", "tail_loss", "%", 0.01),
}
DEFAULT_LEVELS = {"slowdown": [0, 5, 10, 20], "memory": [0, 8, 16, 32], "loss": [0, 3, 6, 10]}


def set_default(clone: Path, plant: Plant, old: str, new: str) -> None:
    mlp = clone / MLP
    text = mlp.read_text(encoding="utf-8")
    text, n = re.subn(rf"(\b{plant.option}: [^=]+= ){re.escape(old)},", rf"\g<1>{new},", text)
    if n != 1:
        raise SystemExit(f"detection_power: no '{plant.option}: ... = {old},' in {MLP}")
    mlp.write_text(text, encoding="utf-8")


def planted_clone(where: Path, plants: list[Plant], levels: tuple[float, ...]) -> Path:
    """A clone of HEAD with two commits on top: the baseline (each plant's zero) and the
    planted levels (none at 0)."""
    clone = where / ("plant-" + "-".join(f"{lv:g}" for lv in levels))
    git(ROOT, "clone", "-q", "--no-hardlinks", str(ROOT), str(clone))
    for plant in plants:
        set_default(clone, plant, plant.default, plant.base)
    git(clone, "commit", "-qam", "baseline: the plants' zeros", "--allow-empty")
    for plant, lv in zip(plants, levels, strict=True):
        set_default(clone, plant, plant.base, plant.value(lv) if lv else plant.base)
    planted = ", ".join(f"{p.option} {lv:g}{p.unit}" for p, lv in zip(plants, levels, strict=True))
    git(clone, "commit", "-qam", f"plant {planted}", "--allow-empty")
    return clone


def cells(line: str) -> list[str]:
    """A table row's cells as a renderer shows them (bench escapes markdown in cells)."""
    return [re.sub(r"\\(.)", r"\1", c).strip() for c in line.strip().strip("|").split("|")]


Outcome = tuple[int, dict[str, tuple[bool, float]]]


def one_compare(clone: Path, out: Path, rounds: int, compare_args: list[str]) -> Outcome:
    """compare_ab's exit status and, per metric, whether a row of it was called
    regressed and the median ratio of its rows."""
    done = subprocess.run(
        [sys.executable, "scripts/compare_ab.py", "--base", "HEAD~1", "--rounds", str(rounds),
         "--out", str(out), "--", *compare_args],
        cwd=clone, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(
            f"detection_power: compare_ab exit {done.returncode}: {done.stderr[-2000:]}"
        )
    rows = [cells(r) for r in done.stdout.splitlines() if r.startswith("| ")]
    metrics: dict[str, tuple[bool, list[float]]] = {}
    for r in rows:
        if len(r) == 8 and re.match(r"[\d.]+ ", r[4]):
            hit, ratios = metrics.get(r[1], (False, []))
            metrics[r[1]] = (hit or r[7] == "regressed", [*ratios, float(r[4].split()[0])])
    return done.returncode, {m: (h, statistics.median(v)) for m, (h, v) in metrics.items()}


def table(plant: Plant, index: int, levels: list[tuple], results: list[list[Outcome]]) -> str:
    """Levels x runs of one plant: the share called regressed (any row: what fails CI),
    the share with a row of the planted metric called, that metric's median ratio."""
    lines = [
        f"| planted ({plant.option}) | runs | called regressed | on {plant.metric} "
        f"| median {plant.metric} ratio |",
        "| --: | --: | --: | --: | --: |",
    ]
    for lv, got in zip(levels, results, strict=True):
        if not got:
            continue
        n, called = len(got), sum(code == 1 for code, _ in got)
        per = [m.get(plant.metric, (False, float("nan"))) for _, m in got]
        hit, ratio = sum(h for h, _ in per), statistics.median(r for _, r in per)
        lines.append(
            f"| {lv[index]:g}{plant.unit} | {n} | {called}/{n} ({called / n:.0%}) "
            f"| {hit}/{n} ({hit / n:.0%}) | {ratio:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    compare_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--plant", choices=sorted(PLANTS), nargs="+", default=["slowdown"],
        help="what to plant; several at once plant their levels together (default slowdown)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="compares per level (default 5)")
    parser.add_argument("--rounds", type=int, default=6, help="compare_ab rounds (default 6)")
    parser.add_argument(
        "--levels", type=float, nargs="+", help="planted levels, with one --plant (% or MiB)"
    )
    args = parser.parse_args(argv)
    plants = [PLANTS[p] for p in args.plant]
    if args.levels and len(plants) > 1:
        parser.error("--levels goes with one --plant; several plant their default levels")
    per_plant = [args.levels] if args.levels else [DEFAULT_LEVELS[p] for p in args.plant]
    levels = list(zip(*per_plant, strict=True))
    if args.runs < 1 or args.rounds < 2 or any(v < 0 or v > 1000 for lv in levels for v in lv):
        parser.error("--runs >= 1, --rounds >= 2, levels in [0, 1000]")
    results: list[list[Outcome]] = [[] for _ in levels]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="detection-power-") as tmp:
        clones = [planted_clone(Path(tmp), plants, lv) for lv in levels]
        # Levels interleaved, run by run (a rotating order): a change in the machine's
        # load lands on every level, not on the last one measured.
        for run in range(args.runs):
            for i in [*range(len(levels))][run % len(levels) :] + [*range(run % len(levels))]:
                got = one_compare(
                    clones[i], Path(tmp) / f"out-{i}-{run}", args.rounds, compare_args
                )
                results[i].append(got)
                print(
                    f"[{time.monotonic() - t0:6.0f} s] run {run} level {levels[i]}: exit {got[0]} "
                    f"{got[1]} load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            for k, plant in enumerate(plants):
                print(table(plant, k, levels, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
