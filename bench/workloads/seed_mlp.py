"""seed-mlp: the tutorial's exact example.

10 -> 50 -> ReLU -> 2, X ~ N(0, 1), labels drawn at random (so nothing is learnable:
this workload measures speed and step arithmetic, not convergence).
"""

from __future__ import annotations

import torch

from bench.workloads.base import ClassificationWorkload, mlp
from bench.workloads.options import check_int


def build(
    *, samples: int | None = None, val_samples: int = 1000, data_seed: int = 0
) -> ClassificationWorkload:
    n = check_int("samples", 10_000 if samples is None else samples, 1)
    val_samples = check_int("val_samples", val_samples, 1)
    g = torch.Generator().manual_seed(check_int("data_seed", data_seed, 0))
    x = torch.randn(n + val_samples, 10, generator=g)
    y = torch.randint(0, 2, (n + val_samples,), generator=g)
    return ClassificationWorkload(
        name="seed-mlp",
        train=(x[:n], y[:n]),
        val=(x[n:], y[n:]),
        make_model=lambda: mlp([10, 50, 2]),
        options={"val_samples": val_samples, "data_seed": data_seed},
    )
