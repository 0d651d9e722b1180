"""Which configurations train together as one stack, and how a list of them is split.

Members of a stack share every setting that changes a shape, the data or the order of
events (workload, b, k, N, epochs, precision, device, flush and evaluation points) and
differ only in what the stacked step takes per member: lr, momentum, weight decay, the
LR schedule and its parameters, and the seed (model initialisation and data order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from bench.config import TrialConfig

# What may differ between the members of one stack.
PER_MEMBER = (
    "lr",
    "momentum",
    "weight_decay",
    "scheduler",
    "scheduler_interval",
    "warmup",
    "step_size",
    "gamma",
    "seed",
)
# Workloads whose loss is a deterministic function of (parameters, batch) over sample
# units: the vectorised forward computes exactly what each solo forward does.
STACKABLE_WORKLOADS = ("seed-mlp", "teacher-mlp")


def solo_reason(config: TrialConfig) -> str | None:
    """Why ``config`` cannot be a stack member (it then runs solo), or None."""
    options = config.workload_options
    checks = (
        (config.workload not in STACKABLE_WORKLOADS, f"workload {config.workload}"),
        (bool(options.get("dropout")), "dropout (random masks per member)"),
        (bool(options.get("step_slowdown")), "step_slowdown"),
        (config.precision not in ("fp32", "fp64"), f"precision {config.precision}"),
        (config.data_path != "tensor", "data_path dataloader"),
        (config.grad_clip is not None, "grad_clip"),
        (config.patience is not None or config.restore_best, "early stopping"),
    )
    return next((why for bad, why in checks if bad), None)


def stack_key(config: TrialConfig) -> str | None:
    """What members of one stack share (canonical JSON), or None when it runs solo."""
    if solo_reason(config) is not None:
        return None
    shared = {k: v for k, v in config.to_dict().items() if k not in PER_MEMBER}
    return json.dumps(shared, sort_keys=True, default=str)


def group(
    items: Sequence[Any], *, max_stack: int, parts: int = 1, config=lambda x: x
) -> list[list[Any]]:
    """``items`` (configs, or what ``config`` maps to one) as stacks of up to
    ``max_stack`` sharing a stack_key, in first-seen order; an item that cannot stack is
    a stack of one. ``parts``: split each key's items into at least that many stacks
    (as evenly as possible) so that ``parts`` idle workers all get work."""
    by_key: dict[str, list[Any]] = {}
    solo: list[list[Any]] = []
    for item in items:
        key = stack_key(config(item))
        if key is None:
            solo.append([item])
        else:
            by_key.setdefault(key, []).append(item)
    stacks: list[list[Any]] = []
    for members in by_key.values():
        n = max(min(parts, len(members)), -(-len(members) // max_stack))
        size, extra = divmod(len(members), n)
        start = 0
        for i in range(n):
            stop = start + size + (i < extra)
            stacks.append(members[start:stop])
            start = stop
    return stacks + solo


def members_differ_only_per_member(configs: Iterable[TrialConfig]) -> bool:
    """True when every config shares one stack key (what a stack requires)."""
    keys = {stack_key(c) for c in configs}
    return len(keys) == 1 and None not in keys
