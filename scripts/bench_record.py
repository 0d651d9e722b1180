"""Where a sweep's per-trial recording time goes, and what batching saves.

    python scripts/bench_record.py RESULTS_FOLDER [--repeats 5] [--trials 64]

Takes the trials (rows and steps) of a sweep's results folder, e.g. a stacked seed-mlp
sweep of ``scripts/bench_stack.py``, and records them again into fresh folders, with a
fresh journal study holding one RUNNING Optuna trial each, in two ways, interleaved:

- ``per-trial``: each trial in turn as the recorder does it one at a time: its two
  parquet files (``bench.store.write_trial``: write, fsync, rename, each), then its ten
  user attributes and ``tell``, each one journal append with its own fsync;
- ``batched``: what ``Recorder.flush`` does with a queue of trials (a stack's members):
  every parquet file at once (``bench.store.write_trials``), then every attribute and
  ``tell`` in one journal append (``TrialWriter.batched``).

For each it prints the time per trial (median, min, max over the repetitions), split
into parquet and study, with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ATTRS = 10  # bench_row, status, label, folder and the six dashboard columns


def load_trials(folder: Path, count: int) -> list[tuple[dict, object]]:
    import pandas as pd
    import pyarrow.parquet as pq

    out = []
    for path in sorted((folder / "trials").glob("*.parquet"))[:count]:
        row = pq.read_table(path).to_pylist()[0]
        steps = pq.read_table(folder / "steps" / path.name).to_pandas()
        out.append(({k: v for k, v in row.items() if v is not None}, pd.DataFrame(steps)))
    if not out:
        raise SystemExit(f"no trials in {folder}")
    return out


def fresh_study(root: Path, n: int):
    import optuna

    from bench.sweep.journal import open_journal
    from bench.sweep.trial_writer import TrialWriter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_journal(root / "optuna.journal")
    study = optuna.create_study(study_name="record", storage=storage)
    return study, TrialWriter(storage), [study.ask() for _ in range(n)]


def tell(study, writer, trial, row: dict) -> None:
    from bench.sweep.recorder import json_safe

    writer.set_user_attr(trial, "bench_row", {k: json_safe(v) for k, v in row.items()})
    for i in range(ATTRS - 1):
        writer.set_user_attr(trial, f"attr{i}", i)
    study.tell(trial, 0.5)


def per_trial(root: Path, trials) -> tuple[float, float]:
    from bench.store import write_trial

    study, writer, asked = fresh_study(root, len(trials))
    parquet = told = 0.0
    for (row, steps), trial in zip(trials, asked, strict=True):
        t0 = time.perf_counter()
        write_trial(root, row, steps, per_key=True)
        t1 = time.perf_counter()
        tell(study, writer, trial, row)
        parquet, told = parquet + t1 - t0, told + time.perf_counter() - t1
    return parquet, told


def batched(root: Path, trials) -> tuple[float, float]:
    from bench.store import write_trials

    study, writer, asked = fresh_study(root, len(trials))
    t0 = time.perf_counter()
    write_trials(root, trials)
    t1 = time.perf_counter()
    with writer.batched():
        for (row, _), trial in zip(trials, asked, strict=True):
            tell(study, writer, trial, row)
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--trials", type=int, default=64)
    args = p.parse_args()
    trials = load_trials(args.folder, args.trials)
    n = len(trials)
    times: dict[str, list[tuple[float, float]]] = {"per-trial": [], "batched": []}
    loads = []
    for _ in range(args.repeats):
        for name, fn in (("per-trial", per_trial), ("batched", batched)):  # interleaved
            with tempfile.TemporaryDirectory(prefix="bench-record-", dir=args.folder.parent) as d:
                times[name].append(fn(Path(d), trials))
            loads.append(os.getloadavg()[0])
    print(
        f"{n} trials of {args.folder} ({len(trials[0][1])} steps each), {args.repeats} "
        f"repetitions; {os.cpu_count()} CPUs, 1-min load average median "
        f"{statistics.median(loads):.1f} (min {min(loads):.1f}, max {max(loads):.1f})"
    )
    for name, runs in times.items():
        per = [1000 * (a + b) / n for a, b in runs]
        pq_ms = statistics.median(1000 * a / n for a, _ in runs)
        study_ms = statistics.median(1000 * b / n for _, b in runs)
        print(
            f"{name:10s} {statistics.median(per):6.1f} ms a trial (min {min(per):.1f}, "
            f"max {max(per):.1f}): parquet {pq_ms:.1f} ms, study {study_ms:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
