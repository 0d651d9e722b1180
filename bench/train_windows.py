"""The windows of one epoch (the same every epoch) and each micro-batch's loss weight.

Each micro-batch's backward is seeded with its weight w: d(loss_sum * w)/d(theta) is the
gradient of loss_sum / units without a division node forward and backward (13 us of
seed-mlp's ~100 us CPU step). Where the unit is the sample, every weight is known from
the plan, so each window's weights are made once, here; token counts depend on the data
and are summed on the device at run time (``token_window``).

- ``normalize="sample"``: every micro-batch's summed loss is divided by the units of the
  whole window, so the accumulated gradient is the gradient of the window's mean loss,
  short windows and uneven micro-batches included.
- ``normalize="micro"``: the tutorial's ``loss.mean() / k``, kept so its error can be
  measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from bench.plan import Plan
from bench.workloads.base import Batch


@dataclass(frozen=True)
class Window:
    micro_batches: int
    samples: int
    weights: list[torch.Tensor] | None  # None: token units, weighed by token_window


class WindowPlan:
    """Per window of an epoch: its micro-batch count, samples and loss weights."""

    def __init__(
        self,
        plan: Plan,
        *,
        token_unit: bool,
        sample_normalised: bool,
        dtype: torch.dtype,
        device: torch.device,
        world_size: int = 1,
        reduce_units: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.k, self.sample_normalised = plan.accumulation_steps, sample_normalised
        self.dtype, self.device = dtype, device
        # Data-parallel ranks: DDP averages gradients over world_size ranks, so each
        # weight is world_size times the 1-process one (the sum of the ranks' shares is
        # then the window's gradient); a token window's total is summed over the ranks
        # by ``reduce_units`` before its first backward.
        self.world_size, self.reduce_units = world_size, reduce_units
        self._inverses: dict[int, torch.Tensor] = {}
        self.windows: list[Window] = []
        for s in range(1, plan.steps_per_epoch + 1):
            sizes = [stop - start for start, stop in map(plan.micro_batch_slice, plan.window(s))]
            if token_unit:
                weights = None
            elif sample_normalised:
                weights = [self._inverse(sum(sizes))] * len(sizes)
            else:  # the tutorial: each micro-batch's mean, divided by k
                weights = [self._inverse(size * self.k) for size in sizes]
            self.windows.append(Window(len(sizes), sum(sizes), weights))
        self.steps_per_epoch = len(self.windows)
        self._samples_before = [0]  # samples of the epoch's windows before window s (s - 1)
        for window in self.windows:
            self._samples_before.append(self._samples_before[-1] + window.samples)

    def _inverse(self, units: int) -> torch.Tensor:
        if units not in self._inverses:
            # torch.full, not torch.tensor: a host value copied to CUDA is a sync.
            self._inverses[units] = torch.full(
                (), self.world_size / units, dtype=self.dtype, device=self.device
            )
        return self._inverses[units]

    def of_step(self, step: int) -> Window:
        """The window global optimizer step ``step`` (from 1) trains on."""
        return self.windows[(step - 1) % self.steps_per_epoch]

    def samples_seen(self, step: int) -> int:
        """Samples trained on up to and including global step ``step``."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        return epoch * self._samples_before[-1] + self._samples_before[index + 1]

    def token_window(
        self, micro: Iterator[Batch], n_micro: int, units_of: Callable[[Batch], torch.Tensor]
    ) -> tuple[Iterator[Batch], list[torch.Tensor], torch.Tensor]:
        """A token window's micro-batches, their weights and its token count (a device
        tensor): the window's total is needed before its first backward."""
        window = [next(micro) for _ in range(n_micro)]
        units = [units_of(b) for b in window]
        window_units = sum(units)
        if self.reduce_units is not None:
            window_units = self.reduce_units(window_units)
        weights = [
            (window_units if self.sample_normalised else u * self.k).to(self.dtype).reciprocal()
            for u in units
        ]
        if self.world_size != 1:
            weights = [w * self.world_size for w in weights]
        return iter(window), weights, window_units
