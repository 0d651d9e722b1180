"""Planted regressions of known size: what ``bench compare`` detects is measured by
planting a change and seeing whether it is called (scripts/detection_power.py).

A planted workload is a classification workload whose ``loss_sum`` adds, on training
calls only (autograd on; validation runs under ``no_grad``):

- ``step_slowdown`` (a fraction): a busy-wait before each forward of that fraction of
  the typical micro-batch cycle (the work between two calls: forward, backward,
  optimizer step, batch indexing, the harness's bookkeeping: what a real regression
  slows). The typical cycle is the median of the last ``CYCLES`` cycles measured in the
  process that trains, so the first calls (autograd's set-up) and a pause do not plant
  long waits. The timing itself costs about 5-8 us a call on the 2-core dev machine (4 %
  of seed-mlp's 200 us step at b = 1): a plain workload against a planted 5 % measured
  +7-9 %. So ``step_slowdown = 0`` runs the same timing and waits nothing, and is the
  baseline a planted slowdown is measured against: the two differ by the wait alone.
  A busy-wait, not a sleep: sleeps overshoot by tens of microseconds, a whole step of
  the smoke sweep.
- ``extra_memory_bytes``: a buffer of that many bytes on the training device, written
  once (so its pages are resident and count in RSS) and held until the workload is
  dropped: a peak-memory regression of known size.
- ``loss_change`` (a fraction): every loss reported ``1 + loss_change`` times its value,
  training and validation, with the same gradients (the added part is detached): a
  loss regression of known size on an otherwise identical, bit-for-bit equal run
  (0: the same two operations, the loss unchanged, so that a planted loss change does
  not also plant their microseconds into the step time).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.workloads.base import Batch, ClassificationWorkload

# Cycles the typical one is the median of: enough that one slow cycle (an allocation, a
# preemption) does not move it, few enough to follow a change of micro-batch size.
CYCLES = 16


@dataclass
class PlantedWorkload(ClassificationWorkload):
    slowdown: float | None = None  # None: no timing at all; 0: timing, no wait
    extra_memory_bytes: int = 0
    loss_change: float | None = None  # None: no op; 0: the op, the loss unchanged
    _cycles: deque = field(default_factory=lambda: deque(maxlen=CYCLES))
    _own: deque = field(default_factory=lambda: deque(maxlen=CYCLES))
    _left_at: float | None = None  # when the last training call's plant returned
    _held: torch.Tensor | None = None
    _set_up: bool = False  # the first cycle (set-up, not typical) has passed

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if not torch.is_grad_enabled():  # validation: not a training step
            self._left_at = None  # and the gap across it is not a cycle
        elif batch[0].device.type != "meta":  # not the FLOP counter's pass on meta tensors
            # (a buffer "held" there would be none, and the pass is not a cycle)
            if self.slowdown is not None:
                self._busy_wait()
            if self.extra_memory_bytes and self._held is None:
                self._held = torch.ones(
                    self.extra_memory_bytes, dtype=torch.uint8, device=batch[0].device
                )
        loss = super().loss_sum(model, batch)
        if self.loss_change is not None:  # 0: loss + 0, bit-equal, at the same cost
            loss = loss + self.loss_change * loss.detach()
        return loss

    def _busy_wait(self) -> None:
        entered = time.perf_counter()
        wait = 0.0
        if self._left_at is not None and not self._set_up:
            # The first cycle holds autograd's and the optimizer's set-up (milliseconds
            # against ~0.2): kept, it would plant a fraction of that into the next steps,
            # and a trial of 7 steps (b = 32 of 200 samples) measures +50 % for a
            # planted 20 %.
            self._set_up = True
        elif self._left_at is not None:
            self._cycles.append(entered - self._left_at)
            wait = max(0.0, self.slowdown * lower_median(self._cycles) - lower_median(self._own))
            until = entered + wait
            while time.perf_counter() < until:
                pass
        left = time.perf_counter()
        self._own.append(left - entered - wait)
        self._left_at = left


def lower_median(values: deque) -> float:
    """The lower of the two middle values (of 2 cycles the shorter: a slow one is the
    outlier), 0 of none."""
    return sorted(values)[(len(values) - 1) // 2] if values else 0.0
