"""Workloads for the OOM and isolation tests (imported by name in probe processes as
``test_oom_helpers:build``; no tests here).

A tiny classifier whose forward pass misbehaves from a given batch size on: it kills
its own process with SIGKILL (what the kernel OOM killer sends), raises an ordinary
error, or allocates ``alloc_mib_per_sample`` MiB per sample (to run out of memory under
a cap in a predictable way).
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

from bench.workloads.base import ClassificationWorkload, mlp


class _Misbehaving(nn.Module):
    def __init__(self, kill_at: int, fail_at: int, alloc_mib_per_sample: float) -> None:
        super().__init__()
        self.net = mlp([8, 16, 2])
        self.kill_at, self.fail_at, self.alloc = kill_at, fail_at, alloc_mib_per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.kill_at and b >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fail_at and b >= self.fail_at:
            raise ValueError(f"deliberate failure at b={b}")
        out = self.net(x)
        if self.alloc:
            # Kept in the graph so it lives until backward, like an activation.
            extra = torch.ones(int(b * self.alloc * 2**18), requires_grad=False)
            out = out + extra.sum() * 0
        return out


def build(
    *,
    samples: int | None = None,
    kill_at: int = 0,
    fail_at: int = 0,
    alloc_mib_per_sample: float = 0.0,
) -> ClassificationWorkload:
    n = 256 if samples is None else samples
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 16, 8, generator=g)
    y = torch.randint(0, 2, (n + 16,), generator=g)
    return ClassificationWorkload(
        name="oom-test",
        train=(x[:n], y[:n]),
        val=(x[n:], y[n:]),
        make_model=lambda: _Misbehaving(kill_at, fail_at, alloc_mib_per_sample),
    )
