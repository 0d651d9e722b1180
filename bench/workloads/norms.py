"""Normalisation layers a workload can be built with, by name (the ``norm`` option).

Which of them make a sample's output depend on the other samples of its micro-batch is
what decides whether k micro-batches of b train like one batch of b·k
(docs/notes/accumulation-audit.md):

- ``batch``: BatchNorm, in training mode. Normalises over the micro-batch (b samples,
  not b·k) and updates its running statistics once per micro-batch (k times a window).
- ``batch-eval``: BatchNorm held in eval mode: it normalises with its running
  statistics and never updates them, as when fine-tuning a pretrained network with its
  BatchNorm frozen. Per sample, so accumulation equals the large batch.
- ``ghost``: ghost batch norm (Hoffer et al. 2017): BatchNorm over fixed slices of
  ``GHOST_BATCH`` samples. When b is a multiple of the slice, (b, k) and (b·k, 1) see
  the same slices in the same order: the same outputs and the same running statistics.
- ``layer`` / ``group``: LayerNorm / GroupNorm, per sample: no batch dependence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The names and their check are torch-free: a sweep's coordinator checks options without torch.
from bench.workloads.declared import CONV_NORMS, MLP_NORMS, check_norm  # noqa: F401

GHOST_BATCH = 8  # samples per ghost batch: the smallest micro-batch the audit splits into
GROUPS = 8  # GroupNorm's groups, at most (fewer where the channels do not divide)


class EvalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that stays in eval mode whatever ``model.train()`` asks."""

    def train(self, mode: bool = True) -> EvalBatchNorm1d:
        return super().train(False)


class EvalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that stays in eval mode whatever ``model.train()`` asks."""

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


class GhostBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over consecutive slices of ``GHOST_BATCH`` samples in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= GHOST_BATCH:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm1d, self).forward(c) for c in x.split(GHOST_BATCH)])


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over consecutive slices of ``GHOST_BATCH`` samples in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= GHOST_BATCH:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm2d, self).forward(c) for c in x.split(GHOST_BATCH)])


def feature_norm(norm: str, features: int) -> nn.Module | None:
    """The layer after a hidden Linear of ``features`` outputs (None for ``none``).
    None of them draws from the RNG when built, so adding one leaves every Linear's
    initial weights as they are without it."""
    return {
        "none": lambda: None,
        "batch": lambda: nn.BatchNorm1d(features),
        "batch-eval": lambda: EvalBatchNorm1d(features),
        "ghost": lambda: GhostBatchNorm1d(features),
        "layer": lambda: nn.LayerNorm(features),
    }[norm]()


def channel_norm(norm: str, channels: int) -> nn.Module:
    """The layer after a convolution of ``channels`` output channels."""
    return {
        "batch": lambda: nn.BatchNorm2d(channels),
        "batch-eval": lambda: EvalBatchNorm2d(channels),
        "ghost": lambda: GhostBatchNorm2d(channels),
        "group": lambda: nn.GroupNorm(math.gcd(channels, GROUPS), channels),
    }[norm]()
