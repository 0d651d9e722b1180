"""seed-mlp: the tutorial's exact example.

10 -> 50 -> ReLU -> 2, X ~ N(0, 1), labels drawn at random (so nothing is learnable:
this workload measures speed and step arithmetic, not convergence).

``step_slowdown`` (a fraction, 0.2 = 20 %) plants a known slowdown: each training
micro-batch busy-waits that fraction of the measured micro-batch cycle. It exists to
measure what ``bench compare`` detects (scripts/detection_power.py): a commit that
changes its default is a code regression of a known size.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.workloads.base import Batch, ClassificationWorkload, draw_rows, mlp
from bench.workloads.options import check_float, check_int


def build(
    *,
    samples: int | None = None,
    val_samples: int = 1000,
    data_seed: int = 0,
    step_slowdown: float = 0.0,
) -> ClassificationWorkload:
    n = check_int("samples", 10_000 if samples is None else samples, 1)
    val_samples = check_int("val_samples", val_samples, 1)
    data_seed = check_int("data_seed", data_seed, 0)
    step_slowdown = check_float("step_slowdown", step_slowdown, 0.0, 10.0)

    def draw(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 10, generator=g), torch.randint(0, 2, (rows,), generator=g)

    parts = dict(
        name="seed-mlp",
        train=draw_rows(n, data_seed, "train", draw),
        val=draw_rows(val_samples, data_seed, "val", draw),
        make_model=lambda: mlp([10, 50, 2]),
        options={"val_samples": val_samples, "data_seed": data_seed},
    )
    if not step_slowdown:  # the plain workload: no timer in the hot loop
        return ClassificationWorkload(**parts)
    parts["options"]["step_slowdown"] = step_slowdown
    return _SlowedWorkload(**parts, slowdown=step_slowdown)


@dataclass
class _SlowedWorkload(ClassificationWorkload):
    """Busy-waits ``slowdown`` x the typical micro-batch cycle before each training
    forward. A cycle is the time from the end of one wait to the next call (forward,
    backward, optimizer step, batch indexing: the work a real regression slows), on the
    host clock; typical is the median of the last 8, so that the first calls (autograd's
    set-up) and a pause (an epoch boundary) do not plant long waits. A busy-wait, not a
    sleep: sleeps overshoot by tens of microseconds, a whole step of the smoke sweep."""

    slowdown: float = 0.0
    _gaps: deque = field(default_factory=lambda: deque(maxlen=8))
    _last: float | None = None

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if not torch.is_grad_enabled():  # validation: not a training step
            self._last = None  # and the gap across it is not a cycle
            return super().loss_sum(model, batch)
        now = time.perf_counter()
        if self._last is not None:
            self._gaps.append(now - self._last)
            until = now + self.slowdown * statistics.median(self._gaps)
            while time.perf_counter() < until:
                pass
        self._last = time.perf_counter()
        return super().loss_sum(model, batch)
