"""``bench oom --stack B``: the largest stack size S (configurations trained together,
bench.stack) that fits a capacity at micro-batch B, each probe a stack in a fresh
capped process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import oom
from bench.config import TrialConfig
from bench.oom.probe_spec import SearchSpec, probe_key, search_key
from bench.procs import run_isolated

REPO = Path(__file__).resolve().parents[1]


def _parse(*argv: str):
    import argparse

    p = argparse.ArgumentParser()
    oom.add_arguments(p)
    return p.parse_args(list(argv))


def test_a_real_stack_search_finds_the_largest_s_and_reuses_its_probes(tmp_path, capsys):
    # teacher-mlp at width 1024 with AdamW: ~30 MiB a member (weights, gradients, two
    # moments, activations), so 500 MiB (about 155 MiB above the baseline) holds a few.
    argv = ["--workload", "teacher-mlp", "--option", "width=1024", "--stack", "32"]
    argv += ["--capacity", "500MiB", "--confirm", "1", "--margin", "0", "--json"]
    args = _parse(*argv, "--results", str(tmp_path))
    assert oom.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    cap = out["capacities"][0]
    s_star = cap["boundary"]
    assert out["stack_batch"] == 32 and s_star >= 2 and cap["first_oom"] == s_star + 1
    probes = pd.read_parquet(tmp_path / "oom" / "teacher-mlp" / "probes.parquet")
    assert set(probes["kind"]) == {"stack"} and set(probes["micro_batch_size"]) == {32}
    fits = probes[probes["outcome"] == "ok"].sort_values("stack_size")
    assert fits["stack_size"].max() == s_star
    assert fits["vmdata_peak_bytes"].is_monotonic_increasing  # more members, more memory
    assert set(probes.loc[probes["outcome"] == "oom", "stack_size"]) >= {s_star + 1}
    # A second run answers from the stored probes.
    assert oom.main(_parse(*argv, "--results", str(tmp_path))) == 0
    again = json.loads(capsys.readouterr().out)["capacities"][0]
    assert again["boundary"] == s_star and again["new_probes"] == 0


def test_a_stack_probe_trains_every_member_in_one_process():
    config = TrialConfig(workload="seed-mlp", batch_size=8, max_steps=3, samples=64, device="cpu")
    run = run_isolated(config, stack_size=3)
    trial = run.result.trial
    assert trial["status"] == "ok" and trial["stack_size"] == 3
    assert trial["optimizer_steps"] == 3 and run.stats["child_rss_hwm_bytes"] > 0


def test_stack_probes_have_keys_of_their_own():
    base = TrialConfig(workload="seed-mlp", device="cpu")
    spec = SearchSpec(base=base, stack_batch=16)
    config = spec.probe_config(16)
    keys = {probe_key(config, 0, "cpu", "stack", "", s) for s in (1, 2, 3)}
    assert len(keys) == 3 and probe_key(config, 0, "cpu", "stack") not in keys
    assert search_key(spec, 0, "cpu") != search_key(SearchSpec(base=base), 0, "cpu")
    assert spec.searched(5) == (16, 5) and SearchSpec(base=base).searched(5) == (5, None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workload", "resnet", "--stack", "8"], "cannot train stacked (workload resnet)"),
        (["--workload", "teacher-mlp", "--option", "dropout=0.1", "--stack", "8"], "dropout"),
        (["--workload", "seed-mlp", "--stack", "8", "--search", "model"], "--search model"),
        (["--workload", "seed-mlp", "--stack", "8", "--target-batch", "64"], "--target-batch"),
        (["--workload", "seed-mlp", "--samples", "100", "--stack", "101"], "exceeds samples 100"),
        (["--workload", "seed-mlp", "--stack", "0"], "--stack must be an integer >= 1"),
    ],
)
def test_bad_stack_input_is_one_line_and_exit_2(tmp_path, argv, message):
    cmd = [sys.executable, "-m", "bench", "oom", *argv, "--results", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "oom").exists()
