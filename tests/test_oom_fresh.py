"""A boundary that holds outside bench's probe process: the b* that ``bench oom``
reports fits, and b* + 1 runs out of memory, in fresh ``python -m bench run``
processes under the same capacity (``--memory-cap``, CPU)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import oom
from bench.oom.run_cap import config_toml

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]

# About 3 MiB of activations a sample: the budget a fresh process has above its own
# baseline differs from a probe child's by about 1 MiB (docs/notes/oom.md), well under
# one sample here. --steps 1: AdamW's state exists after the first step.
WORKLOAD = ["--workload", "teacher-mlp", "--option", "width=262144", "--option", "depth=1",
            "--option", "in_features=4", "--option", "val_samples=8", "--samples", "256",
            "--steps", "1", "--no-eval", "--margin", "0"]  # fmt: skip


def _fresh_runs(toml: Path, jobs: list[int], cap: int, baseline: int, out: Path) -> list[str]:
    """Each b in ``jobs`` trained by its own ``python -m bench run``, two at a time."""
    statuses: list[str] = []
    for pair in (jobs[i : i + 2] for i in range(0, len(jobs), 2)):
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench",
                    "run",
                    "--config",
                    str(toml),
                    "--batch-size",
                    str(b),
                    "--memory-cap",
                    str(cap),
                    "--memory-baseline",
                    str(baseline),
                    "--out",
                    str(out / f"{n}-{b}"),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for n, b in enumerate(pair, start=len(statuses))
        ]
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            statuses.append(stdout.split(":", 1)[0] if stdout else f"crash: {stderr[-300:]}")
    return statuses


@pytest.mark.slow
def test_reported_boundary_holds_in_fresh_bench_run_processes(tmp_path, capsys):
    from bench.procs import measure_baseline

    baseline = int(measure_baseline("cpu")["baseline_bytes"])
    cap = baseline + 256 * MiB
    p = argparse.ArgumentParser()
    oom.add_arguments(p)
    argv = [*WORKLOAD, "--start", "32", "--capacity", str(cap), "--results", str(tmp_path)]
    assert oom.main(p.parse_args([*argv, "--json"])) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert c["exact"] and c["first_oom"] == c["boundary"] + 1 and c["repeats"] == 3
    b = c["boundary"]
    assert 4 <= b < 256, "choose a capacity that gives a real boundary"
    probes = pd.read_parquet(tmp_path / "oom" / "teacher-mlp" / "probes.parquet")
    at_b = probes[(probes["micro_batch_size"] == b) & (probes["outcome"] == "ok")]
    assert len(at_b) == 3 and at_b["vmdata_peak_bytes"].max() <= cap
    toml = tmp_path / "probe.toml"
    toml.write_text(config_toml(json.loads(at_b["config_json"].iloc[0])))
    statuses = _fresh_runs(toml, [b, b + 1] * 3, cap, baseline, tmp_path / "runs")
    assert statuses[0::2] == ["ok"] * 3, statuses
    assert statuses[1::2] == ["oom"] * 3, statuses


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--memory-baseline", "300MiB"], "--memory-baseline needs --memory-cap"),
        (["--memory-cap", "200MiB", "--memory-baseline", "300MiB"], "no training budget"),
        (["--memory-cap", "lots"], "--memory-cap"),
    ],
)
def test_memory_cap_bad_input_is_one_line_exit_2(tmp_path, extra, needle):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--workload", "seed-mlp", "--out",
         str(tmp_path / "out"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and needle in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
