"""A workload for the data-parallel failure tests (imported by name in rank processes as
``test_ddp_helpers:build``; no tests here): seed-mlp whose forward on one rank raises
torch's out-of-memory error from a given call on."""

from __future__ import annotations

import os

import torch
from torch import nn

from bench.workloads import seed_mlp


class _FailingOnRank(nn.Module):
    def __init__(self, net: nn.Module, rank: int, at_call: int) -> None:
        super().__init__()
        self.net, self.rank, self.at_call, self.calls = net, rank, at_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if os.environ.get("RANK") == str(self.rank) and self.calls >= self.at_call:
            raise torch.OutOfMemoryError(f"deliberate out of memory on rank {self.rank}")
        return self.net(x)


def build(*, samples: int | None = None, oom_rank: int = 1, oom_at_call: int = 5):
    workload = seed_mlp.build(samples=samples, val_samples=16)
    make = workload.make_model
    workload.make_model = lambda: _FailingOnRank(make(), oom_rank, oom_at_call)
    return workload
