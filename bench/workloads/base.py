"""What a workload is: training and validation tensors, a model factory and a loss.

The training loop only needs three things from a workload:

- ``loss_sum(model, batch)``: the loss *summed* over the batch's units (samples, or
  target tokens for language models), as a 0-d tensor;
- ``units(batch)``: how many units that sum is over (an int, or a 0-d device tensor
  when it depends on the data, e.g. padding); the loop divides by the window's total,
  so the accumulated gradient is exactly that of the window's mean loss;
- tensors indexed on dim 0, so batches are formed by indexing (no collate step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, ...]


@dataclass
class Workload:
    name: str
    train: Batch
    val: Batch
    make_model: Callable[[], nn.Module]
    unit: str = "sample"  # what the loss is normalised over: "sample" or "token"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.train[0].shape[0])

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def units(self, batch: Batch) -> int | torch.Tensor:
        return int(batch[0].shape[0])

    def flops_per_token_formula(self, model: nn.Module) -> float | None:
        """Analytic training FLOPs per unit, for cross-checking the counter (None: none known)."""
        return None


@dataclass
class ClassificationWorkload(Workload):
    """(x, y) pairs, cross-entropy over classes; the unit is the sample."""

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")


def mlp(sizes: list[int], *, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and dropout, if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
