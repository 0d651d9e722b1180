"""Stacked sweeps: each member is a trial of its own, claimed and recorded exactly once,
also across a kill -9 of the whole sweep and a resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from bench.store import load_results  # noqa: E402
from bench.sweep.runner import run_sweep  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def stacked_spec(tmp_path: Path, name: str, *, samples: int, epochs: int, max_stack: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""\
# Test sweep: does a stacked lr x seed grid record each member once?
name = "{name}"
device = "cpu"
seeds = 4
execution = "stacked"
max_stack = {max_stack}

[workload]
name = "seed-mlp"
options = {{ val_samples = 64 }}

[base]
samples = {samples}
batch_size = 32
epochs = {epochs}
grad_norm_every = 4

[grid]
lr = [0.01, 0.05, 0.1]
""")
    return path


def trials_per_key(folder: Path, sweep: str) -> Counter:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal"))
    )
    study = optuna.load_study(study_name=sweep, storage=storage)
    return Counter(
        t.user_attrs["bench_key"]
        for t in study.get_trials()
        if t.user_attrs.get("bench_status") in ("ok", "oom", "diverged", "failed")
    )


def assert_each_member_once(spec: Path, folder: Path, sweep: str) -> None:
    keys = sorted(p.key for p in load_spec(spec).points)
    r = load_results(folder)
    assert sorted(r.trials["trial_key"]) == keys  # one row per key
    assert set(r.trials["status"]) == {"ok"}
    assert not r.steps.duplicated(["trial_key", "step"]).any()
    per_key = trials_per_key(folder, sweep)
    assert sorted(per_key) == keys and set(per_key.values()) == {1}


def test_a_stacked_sweep_records_every_member_as_a_trial(tmp_path):
    spec = stacked_spec(tmp_path, "stk", samples=256, epochs=1, max_stack=8)
    summary = run_sweep(load_spec(spec), workers=1, threads=1, results=tmp_path / "r")
    assert summary.exit_code == 0
    folder = tmp_path / "r" / "stk"
    assert_each_member_once(spec, folder, "stk")
    trials = load_results(folder).trials
    # 12 trials, 1 worker, at most 8 a stack: one stack of 8 and one of 4.
    assert sorted(Counter(trials["stack_id"]).values()) == [4, 8]
    assert set(trials["stack_size"]) == {4, 8} and set(trials["timing_basis"]) == {"stack"}
    assert (load_results(folder).steps.groupby("trial_key").size() == 8).all()


def test_stacks_are_split_over_every_worker_even_before_all_are_ready(tmp_path):
    # 12 trials, max_stack 12, 2 workers: the first worker ready claims all 12, which
    # are split in two for it and the worker still starting (not one stack on one core).
    spec = stacked_spec(tmp_path, "two", samples=256, epochs=1, max_stack=12)
    summary = run_sweep(load_spec(spec), workers=2, threads=1, results=tmp_path / "r")
    assert summary.exit_code == 0
    trials = load_results(tmp_path / "r" / "two").trials
    assert sorted(Counter(trials["stack_id"]).values()) == [6, 6]


def _files(folder: Path) -> int:
    return len(list((folder / "trials").glob("*.parquet"))) if (folder / "trials").exists() else 0


@pytest.mark.slow
def test_kill_9_during_a_stacked_sweep_then_resume_records_each_member_once(tmp_path):
    # Stacks of 3 (max_stack), one worker: four stacks in turn, each a few seconds.
    spec = stacked_spec(tmp_path, "stkill", samples=3000, epochs=2, max_stack=3)
    results = tmp_path / "r"
    folder = results / "stkill"
    cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--workers", "1"]
    cmd += ["--threads", "1", "--results", str(results)]
    p = subprocess.Popen(
        cmd, env=ENV, cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while _files(folder) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # coordinator, forkserver and worker at once
    p.wait()
    before = _files(folder)
    assert 3 <= before < 12
    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_each_member_once(spec, folder, "stkill")


def test_spec_execution_defaults_to_solo_and_bad_values_are_one_line(tmp_path):
    from bench.errors import ConfigError

    spec = stacked_spec(tmp_path, "stk", samples=64, epochs=1, max_stack=8)
    loaded = load_spec(spec)
    assert (loaded.execution, loaded.max_stack) == ("stacked", 8)
    text = spec.read_text()
    solo = tmp_path / "solo.toml"
    solo.write_text(text.replace('execution = "stacked"\n', "").replace("max_stack = 8\n", ""))
    assert (load_spec(solo).execution, load_spec(solo).max_stack) == ("solo", 64)
    for bad, message in (
        ('execution = "stack"', "did you mean 'stacked'"),
        ("max_stack = 0", ">= 1"),
    ):
        path = tmp_path / "bad.toml"
        key = bad.split(" = ")[0]
        path.write_text(
            "\n".join(bad if line.startswith(key) else line for line in text.splitlines())
        )
        with pytest.raises(ConfigError, match=message):
            load_spec(path)
