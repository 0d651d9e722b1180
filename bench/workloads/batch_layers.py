"""Which layers of a model make a sample's output depend on how the data is batched.

Two kinds, found by walking the model's modules in training mode (as the training loop
puts it):

- BatchNorm (any ``torch.nn`` BatchNorm, SyncBatchNorm, a subclass such as ghost batch
  norm) that is in training mode: it normalises over the micro-batch and updates its
  running statistics once per micro-batch. One held in eval mode is per sample.
- dropout layers (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``...) with p > 0:
  each draws its masks from the global RNG per forward, so with two or more of them k
  micro-batches draw the masks in another order than one batch of b·k does.

The trial row's ``batch_dependent_layers`` column is :func:`describe`'s text:
``"BatchNorm2d×9,Dropout×2"`` (class name × count, in model order), ``""`` when the
model has none, null when it could not be inspected. Dropout called as a function
inside ``forward`` (``F.dropout``) has no module and is not seen.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from bench.workloads.base import Workload

# The common bases of torch's BatchNorm and dropout classes: torch exports no public one.
BATCHNORM = nn.modules.batchnorm._BatchNorm
DROPOUT = nn.modules.dropout._DropoutNd


def batch_dependent(module: nn.Module) -> bool:
    """Whether this one module (not its children) depends on the batching."""
    if isinstance(module, BATCHNORM):
        return module.training
    if isinstance(module, DROPOUT):
        return module.training and module.p > 0
    return False


def describe(model: nn.Module) -> str:
    """``"BatchNorm1d×2,Dropout×2"``: the batch-dependent modules by class, in model
    order; ``""`` when there are none. Inspects the model as ``model.train()`` leaves it
    (its modes are restored afterwards)."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    try:
        counts = Counter(type(m).__name__ for m in model.modules() if batch_dependent(m))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return ",".join(f"{name}×{n}" for name, n in counts.items())


def batch_dependent_layers(workload: Workload) -> str | None:
    """:func:`describe` of the workload's model, built on the meta device (no memory,
    no weights drawn); None when it cannot be built there."""
    try:
        with torch.device("meta"):
            model = workload.make_model()
    except Exception:  # noqa: BLE001 - a model that needs real tensors to build
        return None
    return describe(model)
