"""The training loop does what the plan says, and accumulation is exact."""

import contextlib
import copy
import inspect
import math
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

import bench.train
import bench.train_optim
from bench.config import TrialConfig
from bench.train import train
from bench.train_events import EventSchedule
from bench.train_optim import LRSchedule, hold_grad_accumulators
from bench.train_windows import WindowPlan
from bench.trial import prepare


def run(**overrides):
    config = TrialConfig(**{"workload": "teacher-mlp", "device": "cpu", **overrides})
    workload, plan, device = prepare(config)
    model, outcome = train(config, workload, plan, device)
    return model, outcome, workload, plan


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def rel_diff(a, b):
    return float((a - b).norm() / b.norm())


# 100 samples, b=8: 13 micro-batches (the last has 4 samples); k=4 -> windows 4, 4, 4, 1.
SHORT = dict(
    samples=100,
    precision="fp64",
    lr=0.1,
    epochs=1,
    optimizer="sgd",
    workload_options={"width": 16, "val_samples": 10},
    timing_warmup_steps=0,
)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sample_normalised_accumulation_equals_big_batch(momentum):
    big, _, _, _ = run(**SHORT, batch_size=32, accumulation_steps=1, momentum=momentum)
    acc, outcome, _, plan = run(**SHORT, batch_size=8, accumulation_steps=4, momentum=momentum)
    assert plan.short_window_micro_batches == 1 and outcome.optimizer_steps == 4
    assert rel_diff(params(acc), params(big)) < 1e-10


def test_sample_normalisation_is_exact_over_several_epochs_with_adamw():
    kw = {**SHORT, "epochs": 3, "optimizer": "adamw", "lr": 0.01}
    big, _, _, _ = run(**kw, batch_size=30, accumulation_steps=1)
    acc, _, _, _ = run(**kw, batch_size=10, accumulation_steps=3)  # 10 micro: windows 3,3,3,1
    assert rel_diff(params(acc), params(big)) < 1e-10


def test_micro_normalisation_underweights_the_short_window_by_r_over_k():
    # Full windows (equal micro-batches) agree; the short window of r=1 micro-batch gets
    # its gradient scaled by r/k = 1/4 under loss.mean()/k: plain SGD makes that exact.
    before, _, _, _ = run(**SHORT, batch_size=8, accumulation_steps=4, max_steps=3)
    exact, _, _, _ = run(**SHORT, batch_size=8, accumulation_steps=4, normalize="sample")
    micro, _, _, _ = run(**SHORT, batch_size=8, accumulation_steps=4, normalize="micro")
    p0, p_exact, p_micro = params(before), params(exact), params(micro)
    assert rel_diff(p_micro, p_exact) > 1e-4  # it really differs
    predicted = p0 + (p_exact - p0) * (1 / 4)
    assert rel_diff(p_micro, predicted) < 1e-10
    # ...and not before the short window: the first three steps are identical.
    micro3, _, _, _ = run(
        **SHORT, batch_size=8, accumulation_steps=4, normalize="micro", max_steps=3
    )
    assert rel_diff(params(micro3), p0) < 1e-12


def _reference_sgd(workload, seed, lr, b, k, epochs, leak):
    """Plain SGD over windows of k micro-batches, written out by hand.

    leak=False: each epoch's windows are independent (what bench must do).
    leak=True: the tutorial's loop, `if (i + 1) % k == 0: step()` with i running within
    the epoch but gradients never cleared at the epoch's end, and loss / k.
    """
    torch.manual_seed(seed)
    model = workload.make_model().double()
    x, y = workload.train
    x = x.double()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        micro = [order[i : i + b] for i in range(0, n, b)]
        if leak:
            for i, idx in enumerate(micro):
                (F.cross_entropy(model(x[idx]), y[idx]) / k).backward()
                if (i + 1) % k == 0:
                    opt.step()
                    opt.zero_grad()
        else:
            for w in range(0, len(micro), k):
                idx = torch.cat(micro[w : w + k])
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
                opt.zero_grad()
    return model


def test_no_gradient_leaks_across_epochs():
    # 100 samples, b=8, k=4: each epoch ends with a 1-micro-batch window.
    kw = {**SHORT, "epochs": 3}
    model, _, workload, _ = run(**kw, batch_size=8, accumulation_steps=4)
    clean = _reference_sgd(workload, 0, 0.1, 8, 4, 3, leak=False)
    leaky = _reference_sgd(workload, 0, 0.1, 8, 4, 3, leak=True)
    assert rel_diff(params(model), params(clean)) < 1e-10
    # The same check fails on the tutorial's loop: its leftovers leak into the next epoch.
    assert rel_diff(params(leaky), params(clean)) > 1e-4


def test_dropped_window_is_not_computed_or_applied():
    kw = {**SHORT, "epochs": 2}
    model, outcome, workload, plan = run(
        **kw, batch_size=8, accumulation_steps=4, partial_window="drop"
    )
    assert (
        outcome.optimizer_steps == 6 and outcome.micro_batches == 24 and outcome.samples_seen == 192
    )
    # Equivalent: big batches of 32 over the same order with drop_last (the last 4 dropped).
    big, _, _, _ = run(**kw, batch_size=32, accumulation_steps=1, drop_last=True)
    assert rel_diff(params(model), params(big)) < 1e-10


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_dataloader_path_matches_fast_path(dropout):
    # With dropout the masks come from the global RNG: the DataLoader must not draw
    # its per-epoch seed from it, or the two paths diverge at the first step.
    kw = {
        **SHORT,
        "epochs": 2,
        "workload_options": {**SHORT["workload_options"], "dropout": dropout},
    }
    _, fast, _, _ = run(**kw, batch_size=8, accumulation_steps=4)
    _, slow, _, _ = run(**kw, batch_size=8, accumulation_steps=4, data_path="dataloader")
    assert [r["loss"] for r in fast.rows] == [r["loss"] for r in slow.rows]


def test_same_config_and_seed_gives_identical_curves():
    kw = dict(batch_size=32, epochs=2, lr=0.05, momentum=0.9)
    _, a, _, _ = run(**kw)
    _, b, _, _ = run(**kw)
    _, c, _, _ = run(**kw, seed=1)
    losses = [r["loss"] for r in a.rows]
    assert losses == [r["loss"] for r in b.rows]
    assert losses != [r["loss"] for r in c.rows]


def test_step_rows_follow_the_plan():
    _, outcome, _, plan = run(
        batch_size=8, accumulation_steps=4, samples=100, epochs=2, grad_norm_every=1
    )
    rows = outcome.rows
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["epoch"] for r in rows] == [1] * 4 + [2] * 4
    assert [r["step_in_epoch"] for r in rows] == [1, 2, 3, 4] * 2
    assert [r["micro_batches"] for r in rows] == [4, 4, 4, 1] * 2
    assert [r["samples"] for r in rows] == [32, 32, 32, 4] * 2
    assert rows[-1]["samples_seen"] == 200
    times = [r["time_s"] for r in rows]
    assert all(t2 > t1 for t1, t2 in zip(times, times[1:], strict=False))
    assert all(r["grad_norm"] > 0 for r in rows)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_scheduler_steps_once_per_optimizer_step_or_epoch(interval):
    _, outcome, _, plan = run(
        batch_size=8,
        accumulation_steps=4,
        samples=100,
        epochs=3,
        lr=1.0,
        scheduler="step",
        step_size=1,
        gamma=0.5,
        scheduler_interval=interval,
    )
    lrs = [r["lr"] for r in outcome.rows]
    if interval == "step":  # decays every optimizer step, never per micro-batch
        assert lrs == [0.5**i for i in range(plan.total_steps)]
    else:
        assert lrs == [1.0] * 4 + [0.5] * 4 + [0.25] * 4


def test_scheduler_calls_equal_optimizer_steps(monkeypatch):
    calls = {"scheduler": 0, "optimizer": 0}
    original_sched, original_opt = LRSchedule.step, torch.optim.SGD.step

    def count_sched(self, *a, **k):
        calls["scheduler"] += 1
        return original_sched(self, *a, **k)

    used = []

    def count_opt(self, *a, **k):
        calls["optimizer"] += 1
        used.append(self.param_groups[0]["lr"])
        return original_opt(self, *a, **k)

    monkeypatch.setattr(LRSchedule, "step", count_sched)
    monkeypatch.setattr(torch.optim.SGD, "step", count_opt)
    _, outcome, _, _ = run(
        batch_size=8, accumulation_steps=3, samples=100, epochs=2, scheduler="cosine", warmup=2
    )
    assert calls["optimizer"] == outcome.optimizer_steps == 10
    assert calls["scheduler"] == calls["optimizer"]
    # The lr in each step row is the one the optimizer really stepped with.
    assert [r["lr"] for r in outcome.rows] == used
    assert len(set(used)) > 5


def test_warmup_and_cosine_shapes():
    _, outcome, _, _ = run(
        batch_size=10, samples=100, epochs=1, lr=1.0, scheduler="cosine", warmup=4
    )
    lrs = [r["lr"] for r in outcome.rows]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[-1] < 0.1


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_after_exactly_patience_evaluations(patience):
    # lr=0: the validation loss never improves after the first evaluation.
    _, outcome, _, _ = run(
        batch_size=32, samples=320, epochs=20, lr=0.0, eval_every=2, patience=patience
    )
    evaluations = [r["val_loss"] for r in outcome.rows if r["val_loss"] is not None]
    assert outcome.stopped_early
    assert len(evaluations) == 1 + patience
    assert outcome.optimizer_steps == 2 * (1 + patience)


def test_restore_best_returns_the_best_weights():
    # A large lr makes validation loss rise after a while; restore_best undoes that.
    cfg = dict(
        batch_size=16, samples=256, epochs=30, lr=0.5, momentum=0.9, eval_every=4, patience=1000
    )
    m_best, o_best, workload, _ = run(**cfg, restore_best=True)
    val = tuple(t.to(torch.float32) if t.is_floating_point() else t for t in workload.val)
    with torch.no_grad():
        restored = float(workload.loss_sum(m_best, val) / workload.units(val))
    assert restored == pytest.approx(o_best.best_val_loss, rel=1e-5)
    evaluations = [r["val_loss"] for r in o_best.rows if r["val_loss"] is not None]
    assert min(evaluations) == o_best.best_val_loss


def test_best_val_loss_is_the_lowest_seen_even_when_min_delta_holds_the_reference():
    # min_delta = 0.05: small improvements do not move early stopping's reference (so
    # patience counts them as bad), but the reported best is still the lowest loss.
    _, outcome, _, _ = run(
        batch_size=10, samples=200, epochs=20, lr=0.05, eval_every=5, min_delta=0.05
    )
    evaluations = [r["val_loss"] for r in outcome.rows if r["val_loss"] is not None]
    assert outcome.best_val_loss == min(evaluations)
    # The case the old rule got wrong: some improvement was smaller than min_delta.
    firsts = [evaluations[0]]
    for v in evaluations[1:]:
        if v < firsts[-1] - 0.05:
            firsts.append(v)
    assert firsts[-1] > min(evaluations)


@pytest.mark.parametrize("rule", ["best", "last_improvement"])
def test_restore_rules_reload_the_lowest_or_the_last_min_delta_improvement(rule):
    # The run above: with min_delta = 0.05 the last improvement larger than min_delta is
    # not the lowest loss. "best" reloads the lowest; "last_improvement" Keras' reference.
    # 3 epochs: the last improvement larger than 0.05 is at step 55, the lowest at 60.
    cfg = dict(batch_size=10, samples=200, epochs=3, lr=0.05, eval_every=5, min_delta=0.05)
    model, outcome, workload, _ = run(**cfg, restore_best=True, restore=rule)
    evaluated = [(r["step"], r["val_loss"]) for r in outcome.rows if r["val_loss"] is not None]
    reference = [evaluated[0]]
    for step, v in evaluated[1:]:
        if v < reference[-1][1] - 0.05:
            reference.append((step, v))
    lowest = min(evaluated, key=lambda e: e[1])
    step, val_loss = lowest if rule == "best" else reference[-1]
    assert reference[-1][1] > lowest[1]  # the two rules differ here
    assert outcome.restored_val_loss == val_loss
    # The reloaded weights are those of the run cut at that step, and evaluate to it.
    cut, _, _, _ = run(**{**cfg, "max_steps": step})
    assert torch.equal(params(model), params(cut))
    val = tuple(t.to(torch.float32) if t.is_floating_point() else t for t in workload.val)
    with torch.no_grad():
        assert float(workload.loss_sum(model, val) / workload.units(val)) == pytest.approx(
            val_loss, rel=1e-5
        )


def test_without_restore_best_nothing_is_reloaded():
    cfg = dict(batch_size=10, samples=200, epochs=3, lr=0.05, eval_every=5)
    model, outcome, _, _ = run(**cfg)
    assert outcome.restored_val_loss is None
    assert torch.equal(params(model), params(run(**cfg)[0]))


@pytest.mark.parametrize("workload", ["teacher-mlp", "char-lm"])
def test_steps_completed_before_an_error_are_kept(workload):
    # A simulated OOM in the 40th forward (b = 8, k = 1, no evaluation): 39 optimizer
    # steps ran, none of them flushed yet (flush_every = 64); all 39 must be recorded.
    options = (
        {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 32} if workload == "char-lm" else {}
    )
    config = TrialConfig(
        workload=workload, device="cpu", batch_size=8, samples=800, epochs=1, eval_every=0,
        workload_options=options,
    )  # fmt: skip
    workload_obj, plan, device = prepare(config)
    calls, real = [0], workload_obj.loss_sum

    def failing(model, batch):
        calls[0] += 1
        if calls[0] == 40:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, batch)

    workload_obj.loss_sum = failing
    outcome = bench.train.TrainOutcome()
    with pytest.raises(RuntimeError, match="simulated"):
        train(config, workload_obj, plan, device, outcome=outcome)
    assert [r["step"] for r in outcome.rows] == list(range(1, 40))
    assert outcome.optimizer_steps == 39 and outcome.samples_seen == 39 * 8
    if workload == "char-lm":
        assert outcome.tokens_seen == sum(r["tokens"] for r in outcome.rows) > 0


def test_the_measured_window_opens_after_the_warm_up_steps_evaluation():
    # eval_every = 3 and 3 warm-up steps: step 3 evaluates; that pass is not training
    # and must not fall inside the window (energy_j_per_sample divides by timed samples).
    seen = []
    config = TrialConfig(
        workload="teacher-mlp", device="cpu", batch_size=20, samples=100, epochs=1,
        eval_every=3, timing_warmup_steps=3,
    )  # fmt: skip
    workload, plan, device = prepare(config)
    outcome = bench.train.TrainOutcome()
    train(
        config, workload, plan, device, outcome=outcome,
        on_window_start=lambda: seen.append([r["val_loss"] for r in outcome.rows]),
    )  # fmt: skip
    assert len(seen) == 1 and len(seen[0]) == 3 and seen[0][2] is not None


def test_no_window_opens_when_training_stops_at_the_warm_up_step():
    # Early stop exactly at step 3 = the warm-up: an empty window would give a ~0 energy
    # reading on CUDA where null is right.
    opened = []
    config = TrialConfig(
        workload="teacher-mlp", device="cpu", batch_size=10, samples=100, epochs=5,
        eval_every=1, patience=2, min_delta=100.0, timing_warmup_steps=3,
    )  # fmt: skip
    workload, plan, device = prepare(config)
    _, outcome = train(config, workload, plan, device, on_window_start=lambda: opened.append(1))
    assert outcome.stopped_early and outcome.optimizer_steps == 3
    assert opened == []


def test_divergence_is_a_status_not_a_crash():
    _, outcome, _, _ = run(batch_size=32, samples=512, epochs=5, lr=1e6, flush_every=4)
    assert outcome.status == "diverged"
    assert "non-finite" in outcome.error
    assert outcome.optimizer_steps < 80  # stopped at the first flush that saw it


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision):
    _, outcome, _, _ = run(batch_size=32, samples=512, epochs=2, lr=0.1, precision=precision)
    assert outcome.status == "ok"
    losses = [r["loss"] for r in outcome.rows]
    assert losses[-1] < losses[0]


def test_a_step_gradscaler_skips_is_counted_and_still_a_step_of_the_count_and_schedule():
    # fp16 on the CPU (torch 2.13's GradScaler runs there): 96 samples, b = 8, k = 2, so
    # 6 windows. An inf planted in the gradient of window 3's second micro-batch makes
    # GradScaler skip that optimizer step.
    config = TrialConfig(
        workload="teacher-mlp", device="cpu", precision="fp16", batch_size=8,
        accumulation_steps=2, samples=96, lr=0.05, scheduler="cosine", warmup=2,
        workload_options={"width": 16}, timing_warmup_steps=0, flush_every=4,
    )  # fmt: skip
    workload, plan, device = prepare(config)
    torch.manual_seed(config.seed)
    model = workload.make_model()
    backwards, window_starts = [0], []

    def plant(grad):
        backwards[0] += 1
        window, micro = divmod(backwards[0] - 1, 2)
        if micro == 0:  # the parameters as the window found them
            window_starts.append(params(model).clone())
        return torch.full_like(grad, math.inf) if (window, micro) == (2, 1) else grad

    next(model.parameters()).register_hook(plant)
    model, outcome = train(config, workload, plan, device, model=model)
    _, clean, _, _ = run(**{f: getattr(config, f) for f in ("precision", "batch_size",
        "accumulation_steps", "samples", "lr", "scheduler", "warmup", "workload_options",
        "timing_warmup_steps", "flush_every")})  # fmt: skip
    assert (outcome.skipped_steps, clean.skipped_steps) == (1, 0)
    # The skipped step is a step: counted, its samples seen, the schedule moved past it.
    assert outcome.optimizer_steps == plan.total_steps == 6 and outcome.samples_seen == 96
    assert [r["lr"] for r in outcome.rows] == [r["lr"] for r in clean.rows]
    assert outcome.status == "ok" and all(math.isfinite(r["loss"]) for r in outcome.rows)
    # Only the parameters stayed: window 4 starts where window 3 did.
    assert torch.equal(window_starts[3], window_starts[2])
    assert not torch.equal(window_starts[2], window_starts[1])
    assert run(samples=96, batch_size=8)[1].skipped_steps is None  # no GradScaler, no count


def test_fused_step_only_for_fp16_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    wanted = bench.train_optim.fused_step_wanted
    for precision in ("fp32", "bf16", "fp64"):
        assert not wanted(TrialConfig(precision=precision), cuda)
    assert wanted(TrialConfig(precision="fp16"), cuda)
    assert not wanted(TrialConfig(precision="fp16"), cpu)


@pytest.mark.parametrize(("optimizer", "clip"), [("sgd", None), ("adamw", 1.0)])
def test_fused_fp16_step_never_reads_the_inf_check_and_matches_the_default(
    monkeypatch, optimizer, clip
):
    # The CUDA path, exercised on CPU (torch has fused SGD/AdamW kernels there too): with
    # the fused step GradScaler must not take its .item() path, and the update is the
    # default implementation's: to rounding in fp32, to fp16's rounding in fp16.
    kw = dict(
        batch_size=32, samples=256, epochs=1, lr=0.05, momentum=0.9, optimizer=optimizer,
        grad_clip=clip, seed=4,
    )  # fmt: skip
    default16, d_out, _, _ = run(**kw, precision="fp16")
    default32, _, _, _ = run(**kw, precision="fp32")
    monkeypatch.setattr(bench.train, "fused_step_wanted", lambda config, device: True)
    fused32, _, _, _ = run(**kw, precision="fp32")

    def item_path(*args, **kwargs):
        raise AssertionError("GradScaler read its inf check on the host")

    monkeypatch.setattr(torch.amp.GradScaler, "_maybe_opt_step", item_path)
    fused16, f_out, _, _ = run(**kw, precision="fp16")
    assert f_out.status == "ok" and f_out.optimizer_steps == d_out.optimizer_steps
    assert any("fused optimizer step" in n for n in f_out.notes)
    assert not any("fused" in n for n in d_out.notes)
    assert rel_diff(params(fused32), params(default32)) < 1e-6
    assert rel_diff(params(fused16), params(default16)) < 1e-3


def test_micro_normalisation_with_uneven_micro_batches_weights_samples_wrongly():
    # N=20, b=6 -> micro-batches 6, 6, 6, 2; k=2: windows (6, 6) and (6, 2), the same
    # samples as b=12's batches of 12 and 8. Sample normalisation equals those batches;
    # micro normalisation gives the 2-sample micro-batch the weight of 6.
    kw = {**SHORT, "samples": 20}
    big, _, _, _ = run(**kw, batch_size=12)
    exact, _, _, _ = run(**kw, batch_size=6, accumulation_steps=2)
    micro, _, _, _ = run(**kw, batch_size=6, accumulation_steps=2, normalize="micro")
    assert rel_diff(params(exact), params(big)) < 1e-10
    assert rel_diff(params(micro), params(big)) > 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize(
    "overrides",
    [
        {"precision": "fp32"},
        {"precision": "bf16"},
        # GradScaler with the fused step: no .item() on its inf check.
        {"precision": "fp16"},
        {"precision": "fp16", "optimizer": "adamw", "grad_clip": 1.0},
        # Token units (per-window counts summed on the device), AdamW, clipping.
        {
            "precision": "bf16",
            "workload": "char-lm",
            "samples": 256,
            "batch_size": 16,
            "optimizer": "adamw",
            "lr": 1e-3,
            "grad_clip": 1.0,
            "workload_options": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
        },
        # B_simple's sampled windows: fp16 with k = 2; token units with k = 1 by halves.
        {"precision": "fp16", "accumulation_steps": 2, "noise_scale_every": 3},
        {
            "workload": "char-lm",
            "samples": 256,
            "batch_size": 16,
            "accumulation_steps": 1,
            "noise_scale_every": 3,
            "workload_options": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
        },
    ],
)
def test_cuda_hot_loop_never_syncs_outside_flush_points(overrides):
    config = TrialConfig(
        **{
            "workload": "teacher-mlp",
            "device": "cuda",
            "batch_size": 64,
            "accumulation_steps": 2,
            "epochs": 2,
            "flush_every": 16,
            "eval_every": 20,
            **overrides,
        }
    )
    workload, plan, device = prepare(config)
    torch.manual_seed(0)
    model = copy.deepcopy(workload.make_model()).to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, outcome = train(config, workload, plan, device, model=model)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert outcome.status == "ok" and outcome.optimizer_steps == plan.total_steps


@pytest.mark.gpu
def test_cuda_accumulation_matches_big_batch_in_fp64():
    big, _, _, _ = run(**{**SHORT, "device": "cuda"}, batch_size=32)
    acc, _, _, _ = run(**{**SHORT, "device": "cuda"}, batch_size=8, accumulation_steps=4)
    assert rel_diff(params(acc).cpu(), params(big).cpu()) < 1e-10


CHAR = dict(
    workload="char-lm",
    samples=24,
    precision="fp64",
    lr=0.01,
    epochs=1,
    optimizer="adamw",
    workload_options={
        "seq_len": 32,
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "val_samples": 4,
        "min_len": 4,
    },
    timing_warmup_steps=0,
)


def test_char_lm_token_normalisation_matches_big_batch_and_micro_does_not():
    # Documents of different lengths: a micro-batch's mean over its own tokens weights
    # tokens unevenly across the window; dividing by the window's token count does not.
    big, _, workload, _ = run(**CHAR, batch_size=8)
    lengths = workload.train[1]
    assert lengths.unique().numel() > 3  # really variable-length
    tokens, outcome, _, _ = run(**CHAR, batch_size=2, accumulation_steps=4)
    micro, _, _, _ = run(**CHAR, batch_size=2, accumulation_steps=4, normalize="micro")
    assert outcome.tokens_seen == int((lengths - 1).sum())  # one epoch: every target once
    assert rel_diff(params(tokens), params(big)) < 1e-10
    assert rel_diff(params(micro), params(big)) > 1e-6


def test_grad_norm_is_the_window_gradient_norm_sampled_every_n_steps():
    kw = {**SHORT, "lr": 0.0}  # lr 0: every step sees the initial weights
    model, outcome, workload, _ = run(**kw, batch_size=8, accumulation_steps=4, grad_norm_every=2)
    norms = [r["grad_norm"] for r in outcome.rows]
    assert [n is not None for n in norms] == [False, True, False, True]
    # Step 4 is the short window: the 4 samples of the epoch's last micro-batch.
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    idx = order[96:]
    x, y = workload.train
    model.zero_grad()
    F.cross_entropy(model(x[idx].double()), y[idx]).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norms[3] == pytest.approx(float(expected), rel=1e-12)


def test_grad_clip_records_the_pre_clip_norm_every_step_and_bounds_the_update():
    # One window of the whole set (BGD), so the gradient is deterministic; SGD with lr 1:
    # the update is exactly the clipped gradient, whose norm is the clip.
    kw = {**SHORT, "lr": 1.0, "batch_size": 100, "epochs": 3, "grad_norm_every": 0}
    torch.manual_seed(0)
    model, outcome, workload, _ = run(**kw, grad_clip=1e-3)
    norms = [r["grad_norm"] for r in outcome.rows]
    assert len(norms) == 3 and all(n is not None and n > 1e-3 for n in norms)

    torch.manual_seed(0)
    reference = workload.make_model().double()
    x, y = workload.train
    for step in range(3):
        reference.zero_grad()
        F.cross_entropy(reference(x.double()), y).backward()
        grads = [p.grad for p in reference.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        assert norms[step] == pytest.approx(float(norm), rel=1e-12)
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads, strict=True):
                p -= g * (1e-3 / (float(norm) + 1e-6))  # clip_grad_norm_'s scale
    assert rel_diff(params(model), params(reference)) < 1e-10


def test_a_time_limit_passing_at_the_last_step_does_not_fail_a_finished_trial():
    # time_limit_s is checked at flush points; the last step ends the trial first.
    kw = dict(time_limit_s=1e-6, timing_warmup_steps=0, eval_every=0)
    _, outcome, _, _ = run(**kw, batch_size=32, samples=160, max_steps=5)
    assert outcome.status == "ok" and outcome.optimizer_steps == 5
    _, cut, _, _ = run(**kw, batch_size=8, samples=160, epochs=3, flush_every=4)
    assert cut.status == "failed" and "time limit" in cut.error and cut.optimizer_steps == 4


@pytest.mark.parametrize(
    "overrides",
    [
        {"accumulation_steps": 1},
        {"accumulation_steps": 3},
        {"accumulation_steps": 3, "normalize": "micro", "grad_clip": 0.5},
        {"accumulation_steps": 2, "precision": "fp16", "grad_clip": 1.0},
        {
            "workload": "char-lm",
            "precision": "fp32",
            "accumulation_steps": 2,
            "workload_options": {
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "seq_len": 16,
                "val_samples": 4,
            },
        },
    ],
)
def test_every_backward_goes_through_the_public_tensor_backward(monkeypatch, overrides):
    # The timed step is the loop users write: one Tensor.backward per micro-batch, each
    # seeded with that micro-batch's weight; nothing reaches the autograd engine another way.
    calls, real = [], torch.Tensor.backward

    def counting(self, gradient=None, *args, **kwargs):
        calls.append(gradient)
        return real(self, gradient, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting)
    kw = {**SHORT, "epochs": 2, "batch_size": 8, **overrides}
    _, outcome, _, _ = run(**kw)
    assert outcome.status == "ok" and outcome.optimizer_steps > 2
    assert len(calls) == outcome.micro_batches
    assert all(isinstance(g, torch.Tensor) and g.dim() == 0 for g in calls)


_SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize(
    "overrides",
    [
        {"precision": "fp32"},
        {"precision": "bf16", "optimizer": "adamw", "grad_clip": 1.0},
        {"precision": "fp16", "fused": True},
        {"precision": "fp16", "fused": True, "optimizer": "adamw", "grad_clip": 1.0},
        {
            "workload": "char-lm",
            "samples": 64,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-3,
            "grad_clip": 1.0,
            "workload_options": {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16},
        },
        # B_simple's sampled windows: k = 2, k = 1 by halves, "micro", token units, fp16.
        {"precision": "fp16", "fused": True, "noise_scale_every": 3},
        {"accumulation_steps": 1, "normalize": "micro", "noise_scale_every": 3},
        {
            "workload": "char-lm",
            "samples": 64,
            "batch_size": 4,
            "noise_scale_every": 3,
            "workload_options": {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16},
        },
    ],
)
def test_no_host_read_of_a_tensor_outside_sync_points(monkeypatch, overrides):
    # The CPU stand-in for the CUDA no-sync test: every Python-level read of a tensor's
    # value (what syncs on CUDA) raises unless the loop is inside host_sync_point.
    # fp16 runs the fused optimizer step, as on CUDA. Exempt: torch.optim's reads of its
    # step counters, host tensors on CUDA too (the CUDA test checks that for real).
    overrides = dict(overrides)
    if overrides.pop("fused", False):
        monkeypatch.setattr(bench.train, "fused_step_wanted", lambda config, device: True)
    inside, real_point = [0], bench.train.host_sync_point

    @contextlib.contextmanager
    def counted_point(device):
        inside[0] += 1
        try:
            with real_point(device):
                yield
        finally:
            inside[0] -= 1

    def guard(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not inside[0] and not caller.startswith("torch.optim."):
                raise AssertionError(f"Tensor.{name} outside a host sync point")
            return real(self, *args, **kwargs)

        return read

    monkeypatch.setattr(bench.train, "host_sync_point", counted_point)
    kw = dict(batch_size=16, accumulation_steps=2, samples=256, epochs=2, flush_every=8)
    config = TrialConfig(**{"workload": "teacher-mlp", "device": "cpu", "eval_every": 5, **kw,
                            **overrides})  # fmt: skip
    workload, plan, device = prepare(config)
    with monkeypatch.context() as patch:
        for name in _SYNCING:
            patch.setattr(torch.Tensor, name, guard(name))
        _, outcome = train(config, workload, plan, device)
    assert outcome.status == "ok" and outcome.optimizer_steps == plan.total_steps
    assert any(r["val_loss"] is not None for r in outcome.rows)
    if "noise_scale_every" in overrides:
        assert outcome.b_simple is not None
        assert [r["step"] for r in outcome.rows if r["b_simple"] is not None][:2] == [3, 6]


def test_importing_bench_runs_no_backward_and_a_forked_child_can_train():
    # The forkserver imports bench.trial; a backward there would start autograd's device
    # threads on a GPU machine, and every forked trial's backward would then fail.
    code = """
import os, sys, torch
calls = []
real = torch.autograd.backward
torch.autograd.backward = lambda *a, **k: calls.append(1) or real(*a, **k)
import bench.train, bench.trial
assert not calls, "a backward ran at import"
torch.autograd.backward = real
pid = os.fork()
if pid == 0:
    x = torch.ones(3, requires_grad=True)
    (x * 2).sum().backward()
    os._exit(0 if float(x.grad.sum()) == 6.0 else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_held_grad_accumulators_are_reused_by_every_new_graph():
    layer = torch.nn.Linear(3, 2)
    params_ = list(layer.parameters())

    def accumulate_grad_nodes() -> list:
        """The AccumulateGrad nodes of a fresh graph, found by walking it."""
        out = layer(torch.ones(1, 3)).sum()
        found, todo = [], [out.grad_fn]
        while todo:
            node = todo.pop()
            if type(node).__name__ == "AccumulateGrad":
                found.append(node)
            todo += [f for f, _ in node.next_functions if f is not None]
        out.backward()
        return found

    held = hold_grad_accumulators(params_)
    assert [n.variable for n in held] == params_
    for _ in range(3):  # each graph is freed before the next is built
        nodes = accumulate_grad_nodes()
        assert len(nodes) == 2
        assert all(any(n is h for h in held) for n in nodes), "a graph built its own node"


@pytest.mark.parametrize(
    ("eval_every", "warmup", "flush_every"), [(None, 3, 4), (0, 0, 5), (6, 7, 64), (1, 2, 3)]
)
def test_event_schedule_visits_every_flush_warm_up_evaluation_and_the_last_step(
    eval_every, warmup, flush_every
):
    config = TrialConfig(
        workload="teacher-mlp", batch_size=8, accumulation_steps=4, samples=100, epochs=3,
        eval_every=eval_every, timing_warmup_steps=warmup, flush_every=flush_every,
    )  # fmt: skip
    _, plan, _ = prepare(config)
    events = EventSchedule(config, plan)
    total, per_epoch = plan.total_steps, plan.steps_per_epoch
    assert (total, per_epoch, events.warmup_steps) == (12, 4, warmup)

    def due(s):
        return (
            s % per_epoch == 0 if eval_every is None else bool(eval_every) and s % eval_every == 0
        )

    expected = [
        s for s in range(1, total + 1)
        if s % flush_every == 0 or s in (warmup, total) or due(s)
    ]  # fmt: skip
    visited, step = [], 0
    while step < total:
        step = events.next(step)
        visited.append(step)
    assert visited == expected
    assert [s for s in range(1, total + 1) if events.eval_due(s)] == [
        s for s in range(1, total + 1) if due(s)
    ]
    assert events.out_of_time(5) is None  # no time limit set


@pytest.mark.parametrize("normalize", ["sample", "micro"])
def test_window_plan_weights_and_counts_follow_the_plan(normalize):
    # 100 samples, b=8, k=4: windows of 4, 4, 4, 1 micro-batches; the last holds 4 samples.
    config = TrialConfig(workload="teacher-mlp", **SHORT, batch_size=8, accumulation_steps=4)
    _, plan, _ = prepare(config)
    windows = WindowPlan(
        plan, token_unit=False, sample_normalised=normalize == "sample",
        dtype=torch.float64, device=torch.device("cpu"),
    )  # fmt: skip
    assert [(w.micro_batches, w.samples) for w in windows.windows] == [(4, 32)] * 3 + [(1, 4)]
    weights = [[float(x) for x in w.weights] for w in windows.windows]
    if normalize == "sample":  # every micro-batch divided by its window's samples
        assert weights == [[1 / 32] * 4] * 3 + [[1 / 4]]
    else:  # the tutorial's mean / k: by the micro-batch's own size times k
        assert weights == [[1 / 32] * 4] * 3 + [[1 / 16]]
    assert [windows.samples_seen(s) for s in range(1, 9)] == [32, 64, 96, 100, 132, 164, 196, 200]
    assert windows.of_step(8) is windows.windows[3]


@pytest.mark.parametrize("optimizer, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_settings_left_out_are_torchs_defaults_but_the_tutorials_lr(optimizer, cls):
    weights = [torch.nn.Parameter(torch.zeros(2))]
    built = bench.train_optim.build_optimizer(TrialConfig(optimizer=optimizer), weights)
    # Every hyperparameter torch's constructor defaults, but lr: 0.01, the seed tutorial's.
    assert built.defaults == cls(weights, lr=0.01).defaults
    assert built.defaults["weight_decay"] == {"sgd": 0, "adamw": 0.01}[optimizer]
    given = TrialConfig(optimizer=optimizer, weight_decay=0.0, momentum=0.0)
    assert bench.train_optim.build_optimizer(given, weights).defaults["weight_decay"] == 0.0
    # Unset and torch's default written out train the same: one configuration, one key.
    torchs = inspect.signature(cls).parameters["weight_decay"].default
    assert TrialConfig(optimizer=optimizer, weight_decay=float(torchs)).trial_key == (
        TrialConfig(optimizer=optimizer).trial_key
    )
