"""Plan arithmetic: the seed tutorial's numbers are golden tests."""

import math
import subprocess
import sys

import pytest

from bench.errors import ConfigError
from bench.plan import make_plan


def test_tutorial_epoch_batch_step():
    # N=10000, B=32, E=5: 313 batches per epoch, 1565 steps, epoch 2 batch 50 -> step 363.
    plan = make_plan(samples=10_000, batch_size=32, epochs=5)
    assert plan.micro_batches_per_epoch == 313
    assert plan.steps_per_epoch == 313
    assert plan.total_steps == 1565
    assert plan.global_step(2, 50) == 363
    assert plan.global_step(1, 313) == 313
    assert plan.global_step(5, 313) == 1565
    assert plan.last_micro_batch_size == 10_000 - 312 * 32


@pytest.mark.parametrize(
    "mode, batch_size, steps", [("sgd", None, 200), ("bgd", None, 2), ("mbgd", 20, 10)]
)
def test_tutorial_sgd_bgd_mbgd(mode, batch_size, steps):
    plan = make_plan(samples=100, batch_size=batch_size, mode=mode, epochs=2)
    assert plan.total_steps == steps
    assert plan.micro_batch_size == {"sgd": 1, "bgd": 100, "mbgd": 20}[mode]


@pytest.mark.parametrize("partial_window, steps", [("step", 313), ("drop", 312)])
def test_tutorial_accumulation(partial_window, steps):
    plan = make_plan(
        samples=10_000, batch_size=8, accumulation_steps=4, partial_window=partial_window
    )
    assert plan.micro_batches_per_epoch == 1250
    assert plan.effective_batch_size == 32
    assert plan.short_window_micro_batches == 2
    assert plan.steps_per_epoch == steps


@pytest.mark.parametrize(
    "n, b", [(n, b) for n in (1, 2, 7, 100, 101, 1000) for b in (1, 3, 8, 32) if b <= n]
)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("partial_window", ["step", "drop"])
def test_windows_cover_the_epoch_exactly(n, b, k, drop_last, partial_window):
    m = n // b if drop_last else math.ceil(n / b)
    if b * k > n:  # no window holds b*k samples, whatever happens to the short window
        with pytest.raises(ConfigError, match=f"b\\*k = {b}\\*{k} = {b * k} exceeds samples {n}"):
            make_plan(
                samples=n,
                batch_size=b,
                accumulation_steps=k,
                drop_last=drop_last,
                partial_window=partial_window,
            )
        return
    plan = make_plan(
        samples=n,
        batch_size=b,
        accumulation_steps=k,
        drop_last=drop_last,
        partial_window=partial_window,
        epochs=3,
    )
    assert plan.micro_batches_per_epoch == m
    assert plan.steps_per_epoch == (math.ceil(m / k) if partial_window == "step" else m // k)
    assert plan.total_steps == 3 * plan.steps_per_epoch
    # Windows partition the used micro-batches in order; each has k, but a short last one.
    covered = [i for s in range(1, plan.steps_per_epoch + 1) for i in plan.window(s)]
    assert covered == list(range(len(covered)))
    assert len(covered) == (m if partial_window == "step" else (m // k) * k)
    sizes = [len(plan.window(s)) for s in range(1, plan.steps_per_epoch + 1)]
    assert all(size == k for size in sizes[:-1])
    assert sizes[-1] == (m % k or k if partial_window == "step" else k)
    # Samples per window add up to the samples used per epoch.
    used = sum(plan.window_samples(s) for s in range(1, plan.steps_per_epoch + 1))
    if partial_window == "step":
        assert used == (m * b if drop_last else n)
    # The micro-batch -> global step map agrees with the windows, in every epoch.
    for epoch in (1, 3):
        for s in range(1, plan.steps_per_epoch + 1):
            for i in plan.window(s):
                assert plan.global_step(epoch, i + 1) == (epoch - 1) * plan.steps_per_epoch + s
    if partial_window == "drop" and m % k:
        assert plan.global_step(1, m) is None  # a dropped window reaches no step


def test_max_steps_ends_first():
    plan = make_plan(samples=10_000, batch_size=32, epochs=5, max_steps=400)
    assert plan.total_steps == 400
    assert plan.epochs_run == 2
    assert plan.global_step(2, 87) == 400
    assert plan.global_step(2, 88) is None
    assert make_plan(samples=100, batch_size=10, epochs=1, max_steps=400).total_steps == 10
    assert make_plan(samples=100, batch_size=10, epochs=None, max_steps=25).epochs_run == 3


def test_steps_iterates_in_order():
    plan = make_plan(samples=10, batch_size=3, accumulation_steps=2, epochs=2)
    assert list(plan.steps()) == [(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": 0, "batch_size": 1}, "samples must be >= 1"),
        ({"samples": 10, "batch_size": 0}, "batch_size must be >= 1"),
        ({"samples": 10, "batch_size": 11}, "exceeds samples"),
        (
            {"samples": 10, "batch_size": 2, "accumulation_steps": 0},
            "accumulation_steps must be >= 1",
        ),
        ({"samples": 10, "batch_size": 2, "mode": "sdg"}, "did you mean 'sgd'"),
        ({"samples": 10, "batch_size": 2, "epochs": None}, "give epochs or max_steps"),
        ({"samples": 10, "batch_size": 2.5}, "must be an integer"),
        ({"samples": 10, "batch_size": 2, "partial_window": "keep"}, "partial_window"),
    ],
)
def test_bad_plans_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(**kwargs)


@pytest.mark.parametrize(
    "mode, b, k", [("mbgd", 32, 8), ("mbgd", 30, 4), ("bgd", None, 4), ("sgd", None, 101)]
)
def test_a_window_larger_than_the_epoch_is_an_error(mode, b, k):
    # N = 100: 4 micro-batches of 32 cannot make windows of 8 (B = 256 > N); 30 x 4 = 120
    # would be one short window of 100 every epoch; a full batch cannot be accumulated 4
    # times; 100 samples of SGD cannot make a window of 101.
    with pytest.raises(ConfigError, match="no window can hold"):
        make_plan(samples=100, batch_size=b, accumulation_steps=k, mode=mode)
    fits = {"mbgd": 100 // (b or 1), "bgd": 1, "sgd": 100}[mode]  # the largest k that fits
    assert make_plan(samples=100, batch_size=b, accumulation_steps=fits, mode=mode)


def test_arithmetic_is_exact_beyond_float_precision():
    n = 2**53 + 1  # float(n) == 2**53: true division would lose the last sample
    plan = make_plan(samples=n, batch_size=1)
    assert plan.micro_batches_per_epoch == n and plan.last_micro_batch_size == 1
    plan = make_plan(samples=n, batch_size=2, accumulation_steps=3, epochs=3)
    assert plan.micro_batches_per_epoch == 2**52 + 1 and plan.last_micro_batch_size == 1
    assert plan.steps_per_epoch == (2**52 + 1 + 2) // 3 and plan.epochs_run == 3


def test_bgd_allows_any_given_batch():
    assert make_plan(samples=10, batch_size=50, mode="bgd").micro_batch_size == 10


def test_plan_module_imports_no_torch():
    code = "import sys, bench.plan; assert 'torch' not in sys.modules, 'plan imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
