"""Stacked SGD and AdamW against torch.optim, member by member (fp64: 1e-12 relative)."""

from __future__ import annotations

import pytest
import torch

from bench.stack.optim import StackedAdamW, StackedSGD

SHAPES = [(5, 3), (3,)]
MEMBERS = [
    dict(lr=0.1, momentum=0.9, weight_decay=0.0),
    dict(lr=0.03, momentum=0.0, weight_decay=0.01),
    dict(lr=0.5, momentum=0.5, weight_decay=0.1),
]


def _run(optimizer: str, nesterov: bool = False, steps: int = 6):
    g = torch.Generator().manual_seed(0)
    solo = [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in MEMBERS]
    grads = [
        [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in MEMBERS]
        for _ in range(steps)
    ]
    stacked = [torch.stack([m[j] for m in solo]).clone() for j in range(len(SHAPES))]
    hyper = {k: torch.tensor([m[k] for m in MEMBERS], dtype=torch.float64) for k in MEMBERS[0]}
    if optimizer == "sgd":
        ours = StackedSGD(
            stacked, momentum=hyper["momentum"], weight_decay=hyper["weight_decay"],
            nesterov=nesterov,
        )  # fmt: skip
        theirs = [
            torch.optim.SGD(
                p,
                lr=m["lr"],
                momentum=m["momentum"],
                weight_decay=m["weight_decay"],
                nesterov=nesterov and m["momentum"] > 0,
            )  # fmt: skip
            for p, m in zip(solo, MEMBERS, strict=True)
        ]
    else:
        ours = StackedAdamW(stacked, weight_decay=hyper["weight_decay"])
        theirs = [
            torch.optim.AdamW(p, lr=m["lr"], weight_decay=m["weight_decay"])
            for p, m in zip(solo, MEMBERS, strict=True)
        ]
    for t in range(steps):
        for j, p in enumerate(stacked):
            p.grad = torch.stack([grads[t][i][j] for i in range(len(MEMBERS))])
        ours.step(hyper["lr"] * (0.9**t))  # a schedule: the lr changes every step
        for i, (params, opt) in enumerate(zip(solo, theirs, strict=True)):
            for group in opt.param_groups:
                group["lr"] = MEMBERS[i]["lr"] * (0.9**t)
            for j, p in enumerate(params):
                p.grad = grads[t][i][j]
            opt.step()
    return stacked, solo


@pytest.mark.parametrize("optimizer,nesterov", [("sgd", False), ("sgd", True), ("adamw", False)])
def test_stacked_optimizer_equals_torch_optim(optimizer, nesterov):
    stacked, solo = _run(optimizer, nesterov)
    for j, p in enumerate(stacked):
        for i, params in enumerate(solo):
            expected = params[j].detach()
            rel = ((p[i] - expected).abs().max() / expected.abs().max()).item()
            assert rel <= 1e-12, (optimizer, i, j, rel)
            assert not torch.equal(expected, _run(optimizer, nesterov, steps=0)[1][i][j])


def test_reset_member_zeroes_only_that_member():
    p = torch.ones(3, 2)
    opt = StackedAdamW([p], weight_decay=torch.zeros(3))
    p.grad = torch.ones(3, 2)
    opt.step(torch.full((3,), 0.1))
    opt.reset_member(1)
    assert opt.exp_avg[0][1].abs().sum() == 0 and opt.exp_avg[0][0].abs().sum() > 0
