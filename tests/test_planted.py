"""bench/workloads/planted.py: regressions of known size, planted through seed-mlp's
options (what scripts/detection_power.py measures bench compare with)."""

from __future__ import annotations

import statistics

import pytest
import torch

from bench.errors import ConfigError
from bench.workloads import build_workload
from bench.workloads import planted as planted_module
from bench.workloads.base import ClassificationWorkload


def one_step(workload, seed: int = 0):
    """The loss of one training call and the gradients it gives."""
    torch.manual_seed(seed)
    model = workload.make_model()
    loss = workload.loss_sum(model, tuple(t[:8] for t in workload.train))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_loss_change_raises_the_reported_loss_and_keeps_the_gradients():
    plain = build_workload("seed-mlp", samples=16, options={})
    changed = build_workload("seed-mlp", samples=16, options={"loss_change": 0.25})
    assert type(plain) is ClassificationWorkload and changed.options["loss_change"] == 0.25
    (lp, gp), (lc, gc) = one_step(plain), one_step(changed)
    assert torch.allclose(lc, lp * 1.25, rtol=1e-6) and lc != lp
    assert all(torch.equal(a, b) for a, b in zip(gp, gc, strict=True))  # bit-equal training
    zero = build_workload("seed-mlp", samples=16, options={"loss_change": 0.0})
    assert zero.loss_change == 0.0 and torch.equal(one_step(zero)[0], lp)  # the op, no change
    with torch.no_grad():  # validation reports the changed loss too
        model = changed.make_model()
        val = changed.loss_sum(model, changed.val)
        assert torch.allclose(val, plain.loss_sum(model, plain.val) * 1.25, rtol=1e-6)


def test_extra_memory_is_held_from_the_first_training_call():
    w = build_workload("seed-mlp", samples=16, options={"extra_memory_bytes": 3 * 2**20})
    model = w.make_model()
    with torch.no_grad():
        w.loss_sum(model, w.val)
    assert w._held is None  # validation allocates nothing
    w.loss_sum(model.to("meta"), tuple(t[:4].to("meta") for t in w.train))
    assert w._held is None  # nor the FLOP counter's pass on the meta device
    model = w.make_model()
    w.loss_sum(model, tuple(t[:4] for t in w.train))
    assert w._held.numel() == 3 * 2**20 and int(w._held[-1]) == 1  # written: resident
    held = w._held
    w.loss_sum(model, tuple(t[:4] for t in w.train))
    assert w._held is held  # once, not per call


class FakeClock:
    """perf_counter that moves 1 us a read, plus what the test adds as 'work'."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-6
        return self.now


def typical_cycle(monkeypatch, slowdown: float, calls: int = 40) -> float:
    """Entry-to-entry time of a training call under a fake clock, 200 us of work a step
    after a set-up of 5 ms and then 1 ms; the median of the steps after the first (the
    harness's timing warm-up), or of the second half of a long run."""
    clock = FakeClock()
    monkeypatch.setattr(planted_module, "time", clock)
    w = build_workload("seed-mlp", samples=16, options={"step_slowdown": slowdown})
    model, batch = w.make_model(), tuple(t[:2] for t in w.train)
    cycles = []
    for i in range(calls):
        start = clock.now
        w.loss_sum(model, batch)
        clock.now += {0: 5e-3, 1: 1e-3}.get(i, 200e-6)  # the rest of the step
        cycles.append(clock.now - start)
    return statistics.median(cycles[1:] if calls < 10 else cycles[calls // 2 :])


def test_the_wait_is_the_planted_share_of_the_measured_cycle(monkeypatch):
    # Level 0 times as the others do and waits nothing: the baseline a level is
    # measured against, so the timer reads (1 us each here) cancel out.
    base = typical_cycle(monkeypatch, 0.0)
    assert base == pytest.approx(200e-6, abs=5e-6)
    for slowdown in (0.05, 0.2, 1.0):
        added = typical_cycle(monkeypatch, slowdown) - base
        assert added == pytest.approx(slowdown * 200e-6, abs=3e-6), slowdown  # 3 reads
    # A short trial (b = 32 of 200 samples: 7 calls): the set-up cycle plants nothing.
    added = typical_cycle(monkeypatch, 0.2, calls=7) - typical_cycle(monkeypatch, 0.0, calls=7)
    assert added == pytest.approx(0.2 * 200e-6, abs=3e-6)


def test_planting_options_are_checked_and_absent_by_default():
    plain = build_workload("seed-mlp", samples=16, options={})
    assert not {"step_slowdown", "extra_memory_bytes", "loss_change"} & set(plain.options)
    timed = build_workload("seed-mlp", samples=16, options={"step_slowdown": 0})
    assert timed.options["step_slowdown"] == 0 and timed.slowdown == 0.0  # timing, no wait
    for key, bad in [("extra_memory_bytes", -1), ("extra_memory_bytes", 0.5),
                     ("loss_change", -1.0), ("loss_change", float("nan"))]:  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            build_workload("seed-mlp", samples=16, options={key: bad})
