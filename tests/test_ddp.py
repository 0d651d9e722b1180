"""Data-parallel trials on 2 gloo ranks over loopback: the same numbers as one process
of b*k*2, all-reduces counted as the plan says, a killed rank named and reaped."""

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from bench import store
from bench.cli import main
from bench.config import TrialConfig
from bench.ddp.launch import run_ranks
from bench.ddp.plan import parallel_plan
from bench.errors import ConfigError
from bench.trial import run_trial

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# N=26, b=3 on 2 ranks: global micro-batches of 6, the epoch's fifth is [24, 26), all of
# it rank 0's (rank 1's share is empty); k=2: windows of 2, 2 and a short one of 1.
BASE = dict(
    workload="seed-mlp",
    samples=26,
    batch_size=3,
    accumulation_steps=2,
    epochs=2,
    lr=0.05,
    precision="fp64",
    device="cpu",
    timing_warmup_steps=0,
    grad_norm_every=1,
)


def _one_process(config: TrialConfig):
    return run_trial(config.replace(nproc=None, batch_size=config.batch_size * config.nproc))


def _assert_same_training(one, two) -> None:
    a, b = one.steps, two.steps
    assert len(a) == len(b) == one.trial["planned_steps"]
    assert list(a["samples"]) == list(b["samples"])
    for column in ("loss", "grad_norm", "val_loss"):
        assert torch.allclose(
            torch.tensor(a[column].to_numpy(dtype=float)),
            torch.tensor(b[column].to_numpy(dtype=float)),
            rtol=0,
            atol=1e-10,
            equal_nan=True,
        ), column
    # Evaluations (every epoch end) run on the final parameters of each epoch.
    assert abs(one.trial["best_val_loss"] - two.trial["best_val_loss"]) < 1e-10


@pytest.mark.parametrize(
    "optimizer, extra",
    [("sgd", {"momentum": 0.9}), ("adamw", {"weight_decay": 0.01, "lr": 0.01})],
)
def test_two_ranks_equal_one_process_and_count_allreduces(optimizer, extra):
    config = TrialConfig(**{**BASE, **extra}, optimizer=optimizer, nproc=2)
    parallel = parallel_plan(config, 26)
    plan = parallel.plan
    one = _one_process(config)
    assert one.status == "ok"
    results = {}
    for sync in ("window", "every"):
        two = run_trial(config.replace(sync=sync))
        t = two.trial
        assert t["status"] == "ok", t["error"]
        _assert_same_training(one, two)
        assert (t["world_size"], t["sync"]) == (2, sync)
        assert (t["micro_batch_size"], t["effective_batch_size"]) == (3, 12)
        assert t["optimizer_steps"] == plan.total_steps == 6
        # One bucket for a model this small: one all-reduce per window, or per micro-batch.
        expected = parallel.synced_backwards(sync)
        assert expected == (6 if sync == "window" else 10)  # steps, or 5 micro-batches x 2
        assert t["allreduce_calls"] == expected
        assert json.loads(t["extra"])["allreduce_buckets"] == 1
        params = sum(p.numel() for p in _model(config).parameters())
        assert t["allreduce_bytes"] == expected * params * 8  # fp64 gradients
        assert t["allreduce_time_s"] > 0
        assert t["samples_per_s_per_rank"] == pytest.approx(t["samples_per_s"] / 2)
        results[sync] = two
    assert results["every"].trial["allreduce_calls"] == 10  # 5 micro-batches x 2 epochs
    _assert_same_training(results["window"], results["every"])


def _model(config):
    from bench.workloads import build_workload

    torch.manual_seed(config.seed)
    return build_workload(config.workload, samples=config.samples).make_model()


def test_token_windows_sum_their_units_over_ranks():
    config = TrialConfig(
        workload="char-lm",
        workload_options={"val_samples": 4, "seq_len": 16, "d_model": 16, "n_heads": 2},
        samples=38,  # the last global micro-batch: 2 documents, rank 1's share empty
        batch_size=3,
        accumulation_steps=3,
        epochs=1,
        precision="fp64",
        device="cpu",
        timing_warmup_steps=0,
        grad_norm_every=1,
        nproc=2,
    )
    one, two = _one_process(config), run_trial(config)
    assert two.status == "ok", two.trial["error"]
    assert list(one.steps["tokens"]) == list(two.steps["tokens"])
    _assert_same_training(one, two)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_killed_rank_names_the_rank_and_leaves_no_process():
    config = TrialConfig(
        **{**BASE, "epochs": None, "max_steps": 10**6, "samples": 512, "batch_size": 8},
        nproc=2,
    )
    pids: list[int] = []

    def kill_rank_1(started: list[int]) -> None:
        pids.extend(started)
        threading.Timer(1.0, os.kill, (started[1], signal.SIGKILL)).start()

    result = run_ranks(config, on_started=kill_rank_1, grace_s=5.0)
    t = result.trial
    # SIGKILL is what the kernel's OOM killer sends: "oom", as for a 1-process trial.
    assert t["status"] == "oom"
    assert t["error"].startswith("rank 1: killed by SIGKILL before reporting"), t["error"]
    assert t["world_size"] == 2
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_rank_out_of_memory_is_the_trials_status_with_its_rank():
    config = TrialConfig(
        **{**BASE, "workload": "test_ddp_helpers:build", "samples": 64, "batch_size": 4},
        workload_options={"oom_rank": 1, "oom_at_call": 5},
        nproc=2,
    )
    t = run_ranks(config, grace_s=5.0).trial
    assert t["status"] == "oom"
    assert t["error"] == "rank 1: OutOfMemoryError: deliberate out of memory on rank 1"


def test_bad_input_before_any_rank_starts():
    with pytest.raises(ConfigError, match="b\\*world_size = 15\\*2 = 30 exceeds samples 26"):
        run_trial(TrialConfig(**{**BASE, "batch_size": 15, "accumulation_steps": 1}, nproc=2))
    with pytest.raises(ConfigError, match="data_path 'dataloader' is one process only"):
        TrialConfig(**BASE, nproc=2, data_path="dataloader")


def test_one_process_keys_are_unchanged():
    # nproc and sync at their defaults stay out of to_dict, so trial_key is the same.
    config = TrialConfig(**BASE)
    assert "nproc" not in config.to_dict() and "sync" not in config.to_dict()
    assert config.replace(nproc=2).trial_key != config.trial_key
    assert config.replace(sync="every").trial_key != config.trial_key


def test_cli_run_nproc_writes_one_trial(tmp_path, capsys):
    # In this process (its forkserver is warm): a fresh interpreter would pay ~15 s to
    # start one.
    out = tmp_path / "run"
    args = ["run", "--workload", "seed-mlp", "--samples", "32", "--batch-size", "4"]
    args += ["--accumulation-steps", "2", "--nproc", "2", "--sync", "every", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(
        "ok: seed-mlp mbgd b=4 k=2 ranks=2 sync=every steps=2/2"
    )
    trials = store.load_results(out).trials
    assert len(trials) == 1
    row = trials.iloc[0]
    assert (row["world_size"], row["sync"], row["allreduce_calls"]) == (2, "every", 4)
    assert main([*args, "--data-path", "dataloader", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data_path 'dataloader' is one process only" in err


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_world_size_one(device):
    # One rank: gloo on the CPU, NCCL on one GPU; the same training as no DDP at all.
    config = TrialConfig(**{**BASE, "device": device}, nproc=1)
    one, ddp = _one_process(config), run_trial(config)
    assert ddp.status == "ok", ddp.trial["error"]
    assert (ddp.trial["device"] == "cpu") == (device == "cpu")
    assert ddp.trial["allreduce_calls"] == ddp.trial["optimizer_steps"]
    assert (ddp.trial["allreduce_time_s"] is None) == (device == "cuda")
    _assert_same_training(one, ddp)


def test_ddp_spec_gets_workers_that_may_start_ranks():
    from bench.ddp.launch import spec_starts_ranks
    from bench.sweep.spec import load_spec

    spec = load_spec(EXPERIMENTS / "ddp-accumulation.toml")
    assert spec_starts_ranks(spec)
    grid = {(p.config.accumulation_steps, p.config.sync) for p in spec.points}
    assert grid == {(k, s) for k in (1, 2, 4, 8) for s in ("window", "every")}
    assert all(p.config.nproc == 2 for p in spec.points)
    assert not spec_starts_ranks(load_spec(EXPERIMENTS / "seed.toml"))
