"""SGD and AdamW for stacked parameters: tensors of shape (S, ...), one slice per member.

Each member has its own lr, momentum and weight decay (0-d values gathered into (S,)
tensors) and its own state; the arithmetic is ``torch.optim``'s single-tensor CPU path
(torch/optim/sgd.py ``_single_tensor_sgd``, adam.py ``_single_tensor_adam`` with
decoupled weight decay), with the per-member hyperparameters broadcast along dim 0.
Equal to ``torch.optim`` to ~1e-16 relative in fp64 per update (tests/test_stack_optim.py).
SGD's update is ``p.addcmul_(-lr, grad)``: one multiply-add in place, as torch's
``p.add_(grad, alpha=-lr)`` (teacher-mlp's first fp32 SGD step then equals the solo
run's to the bit on the 2-core EPYC; ``p.sub_(lr * grad)`` rounds the product first).
AdamW keeps torch's arithmetic with per-member step sizes.
"""

from __future__ import annotations

import torch

ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which bench's solo runs use
ADAM_EPS = 1e-8


def per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(S,) values viewed to broadcast against a stacked parameter (S, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class StackedSGD:
    """torch.optim.SGD (momentum, nesterov, coupled weight decay, no dampening) per member."""

    def __init__(
        self,
        params: list[torch.Tensor],
        *,
        momentum: torch.Tensor,
        weight_decay: torch.Tensor,
        nesterov: bool = False,
    ) -> None:
        self.params = params
        self.nesterov = nesterov
        self.any_momentum = bool((momentum != 0).any())
        self.any_decay = bool((weight_decay != 0).any())
        self.momentum = [per_member(momentum, p) for p in params]
        self.weight_decay = [per_member(weight_decay, p) for p in params]
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One update with per-member learning rates ``lr`` (S,)."""
        step = -lr  # p += (-lr) * grad in place: no parameter-sized temporary a step
        for i, p in enumerate(self.params):
            grad = p.grad
            if self.any_decay:
                grad = grad + self.weight_decay[i] * p
            if self.any_momentum:
                # A member with momentum 0 gets buf = grad exactly (0 * buf + grad): the
                # plain SGD step, as torch.optim takes it.
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum[i]).add_(grad)
                grad = grad + self.momentum[i] * buf if self.nesterov else buf
            p.addcmul_(per_member(step, p), grad)

    def reset_member(self, member: int) -> None:
        """Zero a masked member's state (its parameters are zeroed by the caller)."""
        for buf in self.buffers:
            if buf is not None:
                buf[member].zero_()


class StackedAdamW:
    """torch.optim.AdamW (betas 0.9, 0.999, eps 1e-8, no amsgrad) per member."""

    def __init__(self, params: list[torch.Tensor], *, weight_decay: torch.Tensor) -> None:
        self.params = params
        self.weight_decay = weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0  # every member steps together: one count, as torch's per-param one

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        decay = 1 - lr * self.weight_decay
        step_size = lr / bias_correction1
        for p, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            grad = p.grad
            p.mul_(per_member(decay, p))
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # One parameter-sized temporary, not four: a stack's peak holds it S times.
            update = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(ADAM_EPS)
            torch.div(exp_avg, update, out=update)
            p.addcmul_(per_member(-step_size, p), update)

    def reset_member(self, member: int) -> None:
        for state in (*self.exp_avg, *self.exp_avg_sq):
            state[member].zero_()


def stacked_optimizer(
    name: str, params: list[torch.Tensor], momentum: torch.Tensor, weight_decay: torch.Tensor
) -> StackedSGD | StackedAdamW:
    """The stacked form of a TrialConfig's ``optimizer`` ("sgd" or "adamw")."""
    if name == "sgd":
        return StackedSGD(params, momentum=momentum, weight_decay=weight_decay)
    return StackedAdamW(params, weight_decay=weight_decay)
