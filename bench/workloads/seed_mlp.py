"""seed-mlp: the tutorial's exact example.

10 -> 50 -> ReLU -> 2, X ~ N(0, 1), labels drawn at random (so nothing is learnable:
this workload measures speed and step arithmetic, not convergence).
"""

from __future__ import annotations

import torch

from bench.workloads.base import ClassificationWorkload, draw_rows, mlp
from bench.workloads.options import check_int


def build(
    *, samples: int | None = None, val_samples: int = 1000, data_seed: int = 0
) -> ClassificationWorkload:
    n = check_int("samples", 10_000 if samples is None else samples, 1)
    val_samples = check_int("val_samples", val_samples, 1)
    data_seed = check_int("data_seed", data_seed, 0)

    def draw(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 10, generator=g), torch.randint(0, 2, (rows,), generator=g)

    return ClassificationWorkload(
        name="seed-mlp",
        train=draw_rows(n, data_seed, "train", draw),
        val=draw_rows(val_samples, data_seed, "val", draw),
        make_model=lambda: mlp([10, 50, 2]),
        options={"val_samples": val_samples, "data_seed": data_seed},
    )
