"""A stack of MLP classifiers trained with its gradients written out: forward and
backward of ``nn.Sequential(Linear, ReLU, ..., Linear)`` under summed cross-entropy,
as batched matrix products over the stack's members.

Autograd computes the same numbers, but on small members its graph (a node, saved
tensors and a grad buffer per operation, every micro-batch) costs more than the
arithmetic, and it chooses the layout of each weight-gradient product from the forward.
Written out, a seed-mlp step of 64 members takes about half the time
(docs/benchmarks.md, "Stacked sweeps"). Each member's slice of every product and sum
is its own, so a member never mixes with another. The loss gradient goes through the
very ops autograd runs for cross-entropy; the products' rounding may differ from the
solo run's matrix products (fp64: 1e-10 relative per step against the member's solo
run, tests/test_stack.py; fp32: docs/commands/stack.md).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.workloads.base import ClassificationWorkload, Workload


def stacked_mlp(model: nn.Module, workload: Workload, params: dict) -> StackedMLP | None:
    """The written-out form for a plain MLP classifier (``nn.Sequential`` of Linear and
    ReLU, the workload's loss ``ClassificationWorkload.loss_sum``) over the stacked
    ``params``; None otherwise."""
    plain_loss = type(workload).loss_sum is ClassificationWorkload.loss_sum
    layers = list(model) if isinstance(model, nn.Sequential) else []
    kinds = [type(m) for m in layers]
    if not plain_loss or not layers or kinds[-1] is not nn.Linear:
        return None
    # Linear, ReLU, Linear, ReLU, ..., Linear: ReLU exactly between linear layers.
    if kinds[0::2] != [nn.Linear] * len(kinds[0::2]) or set(kinds[1::2]) - {nn.ReLU}:
        return None
    return StackedMLP([f"{i}" for i in range(0, len(layers), 2)], params)


class StackedMLP:
    """Loss sums and gradients of a stack of MLPs; ``params`` is the dict of
    ``torch.func.stack_module_state`` (weights (S, out, in), biases (S, out)).

    Each parameter's ``.grad`` is a buffer of its own, set here once and written in
    place step after step: a fresh one a step meant glibc freeing and faulting in
    megabytes of pages every step (a process training three teacher-mlp stacks of 32
    for 4 epochs: 1.36 M page faults, 4.6 s against 3.3 s with glibc told to keep its
    pages). A weight's buffer has the layout its product is fast in (``_narrow``)."""

    def __init__(self, linear_names: list[str], params: dict) -> None:
        self.layers = [(params[f"{n}.weight"], params[f"{n}.bias"]) for n in linear_names]
        for weight, bias in self.layers:
            if _narrow(weight):
                buffer = weight.new_zeros(weight.shape[0], weight.shape[2], weight.shape[1])
                weight.grad = buffer.transpose(1, 2)
            else:
                weight.grad = torch.zeros_like(weight)
            bias.grad = torch.zeros_like(bias)
        self._minus_w: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits (S, b, classes) of inputs x (S, b, in), and each linear layer's input."""
        inputs = []
        for i, (weight, bias) in enumerate(self.layers):
            if i:  # in place: the product's output is this function's own
                x = torch.relu_(x)
            inputs.append(x)
            # x (S, b, in) @ weight (S, out, in)^T + bias (S, 1, out)
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        return x, inputs

    @torch.no_grad()
    def loss_sums(self, batch: tuple) -> torch.Tensor:
        """Each member's summed cross-entropy (S,) on its micro-batch, without gradients."""
        x, y = batch
        logits, _ = self.forward(x)
        return _nll_sums(torch.log_softmax(logits, -1), y)

    @torch.no_grad()
    def train_step(self, batch: tuple, weight: torch.Tensor, first: bool) -> torch.Tensor:
        """Each member's summed loss (S,) on its micro-batch; writes the gradient of
        ``weight * loss_sum`` into every parameter's ``.grad`` (member i's to slice i),
        or adds it there unless this is the ``first`` micro-batch of a window."""
        x, y = batch
        logits, inputs = self.forward(x)
        log_p = torch.log_softmax(logits, -1)
        loss_sums = _nll_sums(log_p, y)
        # d(weight * sum_j -log_softmax(z_j)[y_j]) / dz through the ops autograd runs for
        # F.cross_entropy (nll_loss's, then log_softmax's backward): the logits' gradient
        # is the solo run's to the bit. softmax(z) - onehot(y) is the same number to
        # rounding, but its ulps sent teacher-mlp's lr = 0.384 member (fp32) 2e-2 away
        # from its solo curve within 256 steps, where these stay within 3.2e-7.
        target = y.unsqueeze(-1)
        grad = torch.zeros_like(log_p).scatter_(-1, target, self._minus(target.shape, weight))
        grad = torch.ops.aten._log_softmax_backward_data(grad, log_p, -1, log_p.dtype)
        for i in range(len(self.layers) - 1, -1, -1):
            w, bias = self.layers[i]
            a = inputs[i]
            _weight_grad(grad, a, w.grad, first)
            _into(bias.grad, first, torch.sum, grad, 1)
            if i:  # back through the linear layer, then the ReLU before it
                grad = torch.ops.aten.threshold_backward(torch.bmm(grad, w), a, 0)
        return loss_sums

    def _minus(self, shape: torch.Size, weight: torch.Tensor) -> torch.Tensor:
        """-weight in ``shape`` (nll_loss's gradient at each target), made once per
        shape and weight tensor (a short micro-batch has its own; the window weights
        live as long as the run, in its WindowPlan)."""
        key = (tuple(shape), weight.data_ptr())
        if key not in self._minus_w:
            self._minus_w[key] = (-weight).expand(shape).contiguous()
        return self._minus_w[key]


def _nll_sums(log_p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return log_p.gather(-1, y.unsqueeze(-1)).sum((1, 2)).neg()


def _narrow(weight: torch.Tensor) -> bool:
    """Few inputs feed many outputs: the weight-gradient product in the parameter's
    layout is narrow, which the CPU's batched GEMM runs slowly (seed-mlp's first layer,
    10 -> 50: 84 us against 31 us at S = 32), so its transpose is computed instead."""
    return 4 * weight.shape[-1] < weight.shape[-2]


def _weight_grad(grad: torch.Tensor, a: torch.Tensor, dst: torch.Tensor, first: bool) -> None:
    """grad^T @ a (S, out, in), summed over the micro-batch, into ``dst`` (the weight's
    ``.grad``, ``_into``). In the parameter's layout, so the optimizer's elementwise ops
    read it in order (on a transposed gradient they took 3-4x longer: 379 against 95 us
    for teacher-mlp's 128 x 128 weights at S = 32), but for a narrow product
    (``_narrow``: ``dst`` is then a transposed buffer, and a^T @ grad fills its transpose)."""
    if dst.stride(-1) != 1:  # narrow: dst.transpose(1, 2) is the contiguous buffer
        _into(dst.transpose(1, 2), first, torch.bmm, a.transpose(1, 2), grad)
    else:
        _into(dst, first, torch.bmm, grad.transpose(1, 2), a)


def _into(dst: torch.Tensor, first: bool, op, *args) -> None:
    """``op(*args)`` written into ``dst`` on a window's first micro-batch (``out=``: no
    temporary), added to it on the others."""
    if first:
        op(*args, out=dst)
    else:
        dst.add_(op(*args))
