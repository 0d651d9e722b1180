"""seed-mlp: the tutorial's exact example.

10 -> 50 -> ReLU -> 2, X ~ N(0, 1), labels drawn at random (so nothing is learnable:
this workload measures speed and step arithmetic, not convergence).

``step_slowdown``, ``extra_memory_bytes`` and ``loss_change`` plant a regression of
known size (bench/workloads/planted.py): they exist to measure what ``bench compare``
detects (scripts/detection_power.py), where a commit that changes one's default is a
code regression of a known size. ``step_slowdown`` and ``loss_change`` are unset by
default (nothing added to the hot loop); 0 runs the plant's work with no effect, the
baseline a planted level is timed against.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.workloads import declared
from bench.workloads.base import ClassificationWorkload, draw_rows, mlp
from bench.workloads.planted import PlantedWorkload

PLANTED_OPTIONS = ("step_slowdown", "extra_memory_bytes", "loss_change")


@declared.options_of(declared.seed_mlp)
def build(**options: Any) -> ClassificationWorkload:
    checked = declared.seed_mlp(**options)
    n, val_samples = checked.n_train, checked.options["val_samples"]
    data_seed = checked.options["data_seed"]
    planted = {k: checked.options[k] for k in PLANTED_OPTIONS}

    def draw(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 10, generator=g), torch.randint(0, 2, (rows,), generator=g)

    parts = dict(
        name="seed-mlp",
        train=draw_rows(n, data_seed, "train", draw),
        val=draw_rows(val_samples, data_seed, "val", draw),
        make_model=lambda: mlp([10, 50, 2]),
        options={"val_samples": val_samples, "data_seed": data_seed},
    )
    # step_slowdown = 0 and loss_change = 0 are planted too: the plant's work with no
    # effect, the baseline a planted level is timed against (its cost lands on both sides).
    planted = {k: v for k, v in planted.items() if v or (v == 0 and k != "extra_memory_bytes")}
    if not planted:  # the plain workload: nothing added to the hot loop
        return ClassificationWorkload(**parts)
    parts["options"] |= planted
    return PlantedWorkload(
        **parts,
        slowdown=planted.get("step_slowdown"),
        extra_memory_bytes=planted.get("extra_memory_bytes", 0),
        loss_change=planted.get("loss_change"),
    )
