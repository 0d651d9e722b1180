"""The gradient noise scale B_simple: exact per window, and right on a planted workload."""

import math

import pytest
import torch
from torch import nn

from bench.config import TrialConfig
from bench.plan import make_plan
from bench.train import train
from bench.train_noise import NoiseScale, halves_change_the_model
from bench.train_windows import WindowPlan
from bench.workloads.base import Workload

DIM, SIGNAL, NOISE_VAR = 8, 1.0, 1.0  # d, |δ|² = |w - w*|², σ² of the label noise


class PlantedRegression(Workload):
    """y = x·w* + ε, x ~ N(0, I_d), ε ~ N(0, σ²); loss ½(x·w − y)² per sample, and a
    model fixed at w = w* + δ (lr 0). Per-sample gradient g = x(x·δ − ε), so
    G = E[g] = δ and Σ = (|δ|² + σ²)·I + δδᵀ (Gaussian fourth moments):
    |G|² = |δ|², tr(Σ) = d(|δ|² + σ²) + |δ|²."""

    def loss_sum(self, model, batch):
        x, y = batch
        return 0.5 * (model(x).squeeze(-1) - y).square().sum()


def truth() -> tuple[float, float]:
    trace = DIM * (SIGNAL + NOISE_VAR) + SIGNAL
    return trace, SIGNAL


def planted(samples: int) -> PlantedRegression:
    g = torch.Generator().manual_seed(1)
    w_star = torch.randn(DIM, generator=g, dtype=torch.float64)
    delta = torch.randn(DIM, generator=g, dtype=torch.float64)
    delta *= math.sqrt(SIGNAL) / delta.norm()

    def draw(n):
        x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
        return x, x @ w_star + math.sqrt(NOISE_VAR) * torch.randn(n, generator=g).double()

    def make_model():
        model = nn.Linear(DIM, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_((w_star + delta).float())
        return model

    return PlantedRegression(
        name="planted", train=draw(samples), val=draw(256), make_model=make_model
    )


@pytest.mark.parametrize(
    "batch_size, k, normalize",
    [(16, 4, "sample"), (16, 4, "micro"), (64, 1, "sample")],  # k = 1: two halves
)
def test_planted_b_simple_is_within_10_percent_of_the_truth(batch_size, k, normalize):
    workload = planted(16384)
    config = TrialConfig(
        device="cpu", precision="fp64", lr=0.0, batch_size=batch_size, accumulation_steps=k,
        normalize=normalize, epochs=2, noise_scale_every=1, eval_every=0,
    )  # fmt: skip
    _, outcome = train(config, workload, config.plan(workload.n_train), torch.device("cpu"))
    trace, signal = truth()
    assert outcome.b_simple == pytest.approx(trace / signal, rel=0.10)
    per_step = [r["b_simple"] for r in outcome.rows]
    assert all(v is not None for v in per_step)  # sampled every step
    assert per_step[-1] == pytest.approx(trace / signal, rel=0.5)  # an EMA: noisier


def by_hand(model, loss_sum, parts):
    """mean_i |G_i|², |G_n|², mean_i 1/u_i and n, from autograd directly."""
    params = list(model.parameters())

    def grad(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    units = [p[0].shape[0] for p in parts]
    n = sum(units)
    micro = [grad(loss_sum(model, p) / u).square().sum() for p, u in zip(parts, units, strict=True)]
    window = grad(sum(loss_sum(model, p) for p in parts) / n).square().sum()
    return torch.stack(micro).mean(), window, sum(1 / u for u in units) / len(units), n


@pytest.mark.parametrize("normalize", ["sample", "micro"])
@pytest.mark.parametrize(
    "samples, which",
    # b = 8, k = 3. N = 58: micro-batches 8·7 + 2, windows (8, 8, 8) ... and a short
    # (8, 2), uneven. N = 50: 8·6 + 2, the short window is one micro-batch of 2, measured
    # as two halves of 1.
    [(58, "first"), (58, "last"), (50, "last")],
)
def test_one_window_is_measured_exactly_in_both_normalisations(normalize, samples, which):
    # The increments of .grad, weighted as the loop weighs them, must give each
    # micro-batch's mean gradient and the window's sample-mean gradient, exactly.
    workload = planted(samples)
    plan = make_plan(samples=samples, batch_size=8, accumulation_steps=3, epochs=1)
    windows = WindowPlan(
        plan, token_unit=False, sample_normalised=normalize == "sample",
        dtype=torch.float64, device=torch.device("cpu"),
    )  # fmt: skip
    step = 1 if which == "first" else plan.steps_per_epoch
    window = windows.of_step(step)
    parts = [
        tuple(t[slice(*plan.micro_batch_slice(i))] for t in workload.train)
        for i in plan.window(step)
    ]
    measured = (
        parts
        if len(parts) > 1
        else [tuple(t[:1] for t in parts[0]), tuple(t[1:] for t in parts[0])]
    )
    model = workload.make_model().double()
    params = list(model.parameters())
    noise = NoiseScale(
        model, params, every=1, sample_normalised=normalize == "sample",
        accumulation_steps=3, scaler=None,
    )  # fmt: skip

    def micro_step(batch, weight):
        loss = workload.loss_sum(model, batch)
        loss.backward(weight)
        return loss.detach()

    loss, pending = noise.window(micro_step, iter(parts), window.weights, workload.units)
    big, small, inverse, n = by_hand(model, workload.loss_sum, measured)
    trace = (big - small) / (inverse - 1 / n)
    signal = small - trace / n
    b_simple = pending.finish(pending.tensor.tolist())  # what the flush does
    assert noise.sums == pytest.approx([float(trace), float(signal)], rel=1e-12)
    assert b_simple == pytest.approx(float(trace / signal), rel=1e-12)  # one window
    assert noise.trial_value() == pytest.approx(float(trace / signal), rel=1e-12)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(sum(workload.loss_sum(model, p) for p in parts)))
    # The loop's .grad is untouched by the measurement: the window's weighted sum.
    expected = torch.autograd.grad(
        sum(workload.loss_sum(model, p) * w for p, w in zip(parts, window.weights, strict=True)),
        params,
    )
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=0)


def test_batch_dependent_layers_are_not_split_and_off_means_off():
    assert halves_change_the_model(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert halves_change_the_model(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
    assert not halves_change_the_model(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert not halves_change_the_model(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))
    workload = planted(256)
    config = TrialConfig(device="cpu", batch_size=16, epochs=1, noise_scale_every=0)
    _, outcome = train(config, workload, config.plan(256), torch.device("cpu"))
    assert outcome.b_simple is None and all(r["b_simple"] is None for r in outcome.rows)
