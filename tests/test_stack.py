"""Stacked members train exactly as their solo runs (fp64), and a diverging member
leaves the others untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import stack_module_state
from torch.nn import functional as F

from bench import records
from bench.config import TrialConfig
from bench.errors import ConfigError
from bench.stack.group import group, stack_key
from bench.stack.mlp import stacked_mlp
from bench.stack.trial import run_stack
from bench.trial import run_trial
from bench.workloads.base import ClassificationWorkload, mlp

# 300 samples in micro-batches of 16, k = 4: 19 micro-batches an epoch, so each epoch
# ends with a short window of 3; three epochs for the per-epoch schedules.
BASE = dict(
    workload="teacher-mlp",
    workload_options={"width": 16, "val_samples": 64},
    samples=300,
    batch_size=16,
    accumulation_steps=4,
    epochs=3,
    precision="fp64",
    device="cpu",
    grad_norm_every=1,
    flush_every=4,
)
CASES = {
    "sgd": ({}, [
        dict(lr=0.05, momentum=0.9, weight_decay=1e-3, seed=1, scheduler="linear-warmup", warmup=5),
        dict(lr=0.1, seed=2, scheduler="cosine", scheduler_interval="epoch", warmup=1),
        dict(lr=0.02, momentum=0.5, seed=3, scheduler="step", step_size=4, gamma=0.5),
    ]),
    "adamw": ({"optimizer": "adamw"}, [
        dict(lr=1e-3, weight_decay=0.01, seed=0, scheduler="cosine", warmup=3),
        dict(lr=3e-3, weight_decay=0.1, seed=5, scheduler="step", scheduler_interval="epoch",
             step_size=1, gamma=0.5),
    ]),
}  # fmt: skip


def _configs(case: str, **changes) -> list[TrialConfig]:
    shared, members = CASES[case]
    return [TrialConfig(**{**BASE, **shared, **m, **changes}) for m in members]


def _assert_close(stacked, solo, *, rel: float) -> None:
    for column in ("loss", "grad_norm", "val_loss", "lr", "samples_seen", "step_in_epoch"):
        a, b = stacked[column].to_numpy(float), solo[column].to_numpy(float)
        assert a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)), column
        finite = np.isfinite(b)
        error = np.abs(a[finite] - b[finite]) / np.maximum(np.abs(b[finite]), 1e-300)
        assert error.max(initial=0.0) <= rel, (column, error.max())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_members_equal_their_solo_runs_fp64(case, chunk, monkeypatch):
    # chunk: micro-batches gathered at once (None: the default, the whole epoch here);
    # with 5, each epoch's 19 gather as 5 + 5 + 5 + 4, across the windows of 4, the
    # short micro-batch in the last.
    if chunk is not None:
        monkeypatch.setattr("bench.stack.train._chunk_micro_batches", lambda *_: chunk)
    configs = _configs(case)
    results = run_stack(configs)
    for config, result in zip(configs, results, strict=True):
        solo = run_trial(config)
        assert result.status == solo.status == "ok"
        assert len(result.steps) == len(solo.steps) == 15  # 5 windows x 3 epochs
        assert result.steps["val_loss"].notna().sum() == 3  # one evaluation an epoch
        _assert_close(result.steps, solo.steps, rel=1e-10)
        assert result.trial["final_loss"] == pytest.approx(solo.trial["final_loss"], rel=1e-10)
        assert result.trial["trial_key"] == config.trial_key
        assert result.trial["stack_size"] == len(configs)
        assert result.trial["timing_basis"] == "stack"
        assert solo.trial["stack_size"] is None and solo.trial["timing_basis"] is None
    assert len({r.trial["stack_id"] for r in results}) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_members_on_cuda_equal_their_solo_runs_fp64(case):
    # The same stack on the GPU: batched cuBLAS products against the solo run's.
    configs = _configs(case, device="cuda")
    results = run_stack(configs)
    for config, result in zip(configs, results, strict=True):
        solo = run_trial(config)
        assert result.status == solo.status == "ok"
        _assert_close(result.steps, solo.steps, rel=1e-10)
        assert result.trial["device"] == solo.trial["device"] != "cpu"
        assert result.trial["peak_allocated_bytes"] > 0  # the stack's own peak


def test_fp32_members_within_the_stated_bound():
    # docs/commands/stack.md states the bound: 1e-5 relative per step over 15 steps.
    configs = _configs("sgd", precision="fp32")
    for config, result in zip(configs, run_stack(configs), strict=True):
        _assert_close(result.steps, run_trial(config).steps, rel=1e-5)


def test_seed_mlp_members_equal_their_solo_runs_fp64_with_drop_last(monkeypatch):
    # seed-mlp's first layer (10 -> 50) is narrow: its gradient buffer is transposed
    # (bench.stack.mlp._narrow). drop_last: 18 full micro-batches an epoch, in windows
    # of 4 + 4 + 4 + 4 + 2, gathered 5 at a time.
    monkeypatch.setattr("bench.stack.train._chunk_micro_batches", lambda *_: 5)
    configs = _configs("sgd", workload="seed-mlp", workload_options={"val_samples": 64},
                       drop_last=True)  # fmt: skip
    for config, result in zip(configs, run_stack(configs), strict=True):
        solo = run_trial(config)
        assert result.status == solo.status == "ok"
        assert len(result.steps) == len(solo.steps) == 15
        assert result.steps["samples"].sum() == 3 * 18 * 16
        _assert_close(result.steps, solo.steps, rel=1e-10)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_members_with_normalisation_equal_their_solo_runs_fp64(norm):
    # Not a plain MLP: vmap of functional_call and autograd train the stack, and each
    # evaluation uses the running statistics (eval mode), as the solo run's does.
    configs = _configs("sgd", workload_options={**BASE["workload_options"], "norm": norm})
    for config, result in zip(configs, run_stack(configs), strict=True):
        solo = run_trial(config)
        assert result.steps["val_loss"].notna().sum() == 3
        _assert_close(result.steps, solo.steps, rel=1e-10)


@pytest.mark.parametrize("sizes", [[10, 50, 2], [7, 16, 16, 5], [40, 3, 9]])
def test_written_out_mlp_gradients_equal_autograd(sizes):
    # Both weight-gradient layouts (in <= out and in > out), one and two hidden layers,
    # a second micro-batch added to the first's gradients, and a window's first
    # micro-batch writing over the last window's.
    torch.manual_seed(0)
    models = [mlp(sizes).double() for _ in range(3)]
    params, _ = stack_module_state(models)
    mine = {name: p.detach().clone() for name, p in params.items()}
    stacked = stacked_mlp(models[0], ClassificationWorkload("t", (), (), lambda: None), mine)
    weight = torch.tensor(0.125, dtype=torch.float64)
    batches = [
        (torch.randn(3, b, sizes[0], dtype=torch.float64), torch.randint(0, sizes[-1], (3, b)))
        for b in (8, 5)
    ]
    for first, (x, y) in zip((True, False), batches, strict=True):
        sums = stacked.train_step((x, y), weight, first)
        for i, model in enumerate(models):
            loss = F.cross_entropy(model(x[i]), y[i], reduction="sum")
            assert sums[i].item() == pytest.approx(loss.item(), rel=1e-14)
            (loss * weight).backward()
    for name, p in mine.items():
        expected = torch.stack([dict(m.named_parameters())[name].grad for m in models])
        torch.testing.assert_close(p.grad, expected, rtol=1e-13, atol=1e-15)
    (x, y), before = batches[1], {name: p.grad.clone() for name, p in mine.items()}
    stacked.train_step((x, y), weight, True)  # the next window: the second batch alone
    for i, model in enumerate(models):
        model.zero_grad()
        (F.cross_entropy(model(x[i]), y[i], reduction="sum") * weight).backward()
    for name, p in mine.items():
        expected = torch.stack([dict(m.named_parameters())[name].grad for m in models])
        torch.testing.assert_close(p.grad, expected, rtol=1e-13, atol=1e-15)
        assert not torch.allclose(p.grad, before[name])


def test_a_diverging_member_is_masked_and_the_others_are_untouched():
    calm = _configs("sgd")
    wild = [calm[0], calm[1].replace(lr=1e12), calm[2]]
    calm_results, wild_results = run_stack(calm), run_stack(wild)
    diverged = wild_results[1]
    assert diverged.status == "diverged" and "non-finite loss" in diverged.trial["error"]
    _assert_close(diverged.steps, run_trial(wild[1]).steps, rel=1e-10)  # same rows as solo
    for i in (0, 2):
        assert wild_results[i].status == "ok"
        for column in ("loss", "grad_norm", "val_loss"):  # bit for bit
            a = wild_results[i].steps[column].to_numpy(float)
            b = calm_results[i].steps[column].to_numpy(float)
            assert np.array_equal(a, b, equal_nan=True), column
        _assert_close(wild_results[i].steps, run_trial(wild[i]).steps, rel=1e-10)


def test_member_rows_fit_the_results_contract():
    results = run_stack(_configs("adamw"), sweep="s")
    table = records.trials_table([r.trial for r in results])
    assert table.column("timing_basis").to_pylist() == ["stack", "stack"]
    assert table.column("sweep").to_pylist() == ["s", "s"]
    steps = records.steps_table(results[0].steps)
    assert steps.num_rows == 15


def test_grouping_splits_by_shared_settings_and_size():
    a = [TrialConfig(**BASE, lr=lr, seed=s) for lr in (0.1, 0.2) for s in range(3)]
    b = [TrialConfig(**{**BASE, "batch_size": 8}, lr=0.1, seed=s) for s in range(2)]
    solo = TrialConfig(**{**BASE, "precision": "bf16"})
    assert stack_key(solo) is None
    stacks = group(a + b + [solo], max_stack=4)
    assert [len(s) for s in stacks] == [3, 3, 2, 1]
    assert group(a, max_stack=64, parts=2) == [a[:3], a[3:]]
    assert all(len({stack_key(c) for c in s}) == 1 for s in stacks)


def test_a_mixed_stack_is_refused():
    with pytest.raises(ConfigError, match="share every setting"):
        run_stack([TrialConfig(**BASE), TrialConfig(**{**BASE, "batch_size": 8})])


def test_compare_says_when_stacked_throughput_meets_solo(tmp_path):
    from bench.report import compare
    from bench.report.metrics import METRICS
    from bench.trial import write_result

    configs = _configs("adamw")
    for result in run_stack(configs):
        write_result(result, tmp_path / "stacked")
    for config in configs:
        write_result(run_trial(config), tmp_path / "solo")
    metrics = [METRICS["samples_per_s"]]
    mixed = compare.compare(tmp_path / "solo", tmp_path / "stacked", metrics=metrics)
    lines = [w for w in mixed.warnings if "throughput not like for like" in w]
    assert len(lines) == 1 and "solo" in lines[0] and "stack" in lines[0]
    same = compare.compare(tmp_path / "stacked", tmp_path / "stacked", metrics=metrics)
    assert not [w for w in same.warnings if "like for like" in w]


def test_a_stack_past_its_members_time_limit_fails_every_member():
    # 1 ns a member: the stack is past its deadline (S limits) at its first event.
    configs = _configs("sgd", time_limit_s=1e-9, flush_every=1)
    for result in run_stack(configs):
        assert result.status == "failed" and len(result.steps) == 1
        assert "time limit" in result.trial["error"] and "a stack of 3" in result.trial["error"]


def test_a_stack_that_runs_out_of_memory_is_split(monkeypatch):
    from bench.stack import trial as stack_trial

    real = stack_trial.train_stack
    sizes = []

    def small_stacks_only(configs, *args, **kwargs):
        sizes.append(len(configs))
        if len(configs) > 1:
            raise torch.OutOfMemoryError("planted: the stack does not fit")
        return real(configs, *args, **kwargs)

    monkeypatch.setattr(stack_trial, "train_stack", small_stacks_only)
    results = run_stack(_configs("sgd"))
    assert sizes == [3, 1, 2, 1, 1]  # 3 -> 1 + 2, 2 -> 1 + 1
    assert [r.status for r in results] == ["ok"] * 3
    assert [r.trial["stack_size"] for r in results] == [1, 1, 1]
