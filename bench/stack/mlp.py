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


def stacked_mlp(model: nn.Module, workload: Workload) -> StackedMLP | None:
    """The written-out form for a plain MLP classifier (``nn.Sequential`` of Linear and
    ReLU, the workload's loss ``ClassificationWorkload.loss_sum``); None otherwise."""
    plain_loss = type(workload).loss_sum is ClassificationWorkload.loss_sum
    layers = list(model) if isinstance(model, nn.Sequential) else []
    kinds = [type(m) for m in layers]
    if not plain_loss or not layers or kinds[-1] is not nn.Linear:
        return None
    # Linear, ReLU, Linear, ReLU, ..., Linear: ReLU exactly between linear layers.
    if kinds[0::2] != [nn.Linear] * len(kinds[0::2]) or set(kinds[1::2]) - {nn.ReLU}:
        return None
    return StackedMLP([f"{i}" for i in range(0, len(layers), 2)])


class StackedMLP:
    """Loss sums and gradients of a stack of MLPs; parameters are the dict of
    ``torch.func.stack_module_state`` (weights (S, out, in), biases (S, out))."""

    def __init__(self, linear_names: list[str]) -> None:
        self.names = [(f"{n}.weight", f"{n}.bias") for n in linear_names]
        self._minus_w: dict[tuple, torch.Tensor] = {}

    def forward(self, params: dict, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits (S, b, classes) of inputs x (S, b, in), and each linear layer's input."""
        inputs = []
        for i, (weight, bias) in enumerate(self.names):
            if i:
                x = torch.relu(x)
            inputs.append(x)
            # x (S, b, in) @ weight (S, out, in)^T + bias (S, 1, out)
            x = torch.baddbmm(params[bias].unsqueeze(1), x, params[weight].transpose(1, 2))
        return x, inputs

    @torch.no_grad()
    def loss_sums(self, params: dict, batch: tuple) -> torch.Tensor:
        """Each member's summed cross-entropy (S,) on its micro-batch, without gradients."""
        x, y = batch
        logits, _ = self.forward(params, x)
        return _nll_sums(torch.log_softmax(logits, -1), y)

    @torch.no_grad()
    def train_step(self, params: dict, batch: tuple, weight: torch.Tensor) -> torch.Tensor:
        """Each member's summed loss (S,) on its micro-batch; adds the gradient of
        ``weight * loss_sum`` to every parameter's ``.grad`` (member i's to slice i)."""
        x, y = batch
        logits, inputs = self.forward(params, x)
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
        for i in range(len(self.names) - 1, -1, -1):
            weight_name, bias_name = self.names[i]
            a, w = inputs[i], params[weight_name]
            _accumulate(params[weight_name], _weight_grad(grad, a))
            _accumulate(params[bias_name], grad.sum(1))
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


def _weight_grad(grad: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """grad^T @ a (S, out, in), summed over the micro-batch. Of its two equal forms, the
    one whose product has the longer rows: (S, in, out) then viewed transposed where in
    <= out. On the CPU the other form is 3-4x slower (x^T @ g for seed-mlp's first
    layer: 46 us against 166 us at S = 64, b = 32)."""
    if a.shape[-1] <= grad.shape[-1]:
        return torch.bmm(a.transpose(1, 2), grad).transpose(1, 2)
    return torch.bmm(grad.transpose(1, 2), a)


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
