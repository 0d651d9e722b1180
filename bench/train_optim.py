"""What one optimizer step is made of: precision, optimizer, lr schedule, the window's update.

Everything here is public PyTorch: ``torch.optim`` optimizers, ``torch.amp``'s autocast
and GradScaler, ``nn.utils.clip_grad_norm_`` / ``get_total_norm``. A benchmark times the
loop its users write, so the step calls what they call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from bench.config import TrialConfig


def model_dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision == "fp64" else torch.float32


def autocast_context(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def build_optimizer(config: TrialConfig, params, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW, torch's default implementation (foreach on CUDA) unless ``fused``.
    An unset weight decay is torch's default for the optimizer (SGD 0, AdamW 0.01)."""
    extra = {"fused": True} if fused else {}
    decay = config.effective_weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=decay, **extra
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=decay, **extra)


def fused_step_wanted(config: TrialConfig, device: torch.device) -> bool:
    """fp16 on CUDA: the fused optimizer kernels take GradScaler's inf flag on the device
    (``_step_supports_amp_scaling``). With the default foreach step, ``GradScaler.step``
    reads that flag with ``.item()``: a host sync every optimizer step, which the loop
    otherwise never has (torch/amp/grad_scaler.py, ``_maybe_opt_step``). The math is the
    same update; every other precision keeps torch's default implementation."""
    return config.precision == "fp16" and device.type == "cuda"


def lr_factor(config: TrialConfig, total_intervals: int) -> Callable[[int], float]:
    """LR multiplier after ``t`` scheduler intervals (optimizer steps or epochs)."""
    warmup, name = config.warmup, config.scheduler

    def factor(t: int) -> float:
        if name in ("linear-warmup", "cosine") and warmup and t < warmup:
            return (t + 1) / warmup
        if name == "cosine":
            span = max(1, total_intervals - warmup)
            progress = min(1.0, (t - warmup) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "step":
            return config.gamma ** (t // config.step_size)
        return 1.0

    return factor


class LRSchedule:
    """Sets every param group's lr to base_lr * factor(t) after t intervals.

    Our own rather than LambdaLR: the same arithmetic through the optimizer's public
    ``param_groups``, without ~10 us of Python per optimizer step, which is a measurable
    share of a small model's step on the CPU.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> None:
        self.optimizer, self.factor, self.intervals = optimizer, factor, 0
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self._apply()

    def step(self) -> None:
        self.intervals += 1
        self._apply()

    def lr_at(self, intervals: int) -> float:
        """The first param group's lr after ``intervals`` steps of this schedule."""
        return self.base_lrs[0] * self.factor(intervals)

    def _apply(self) -> None:
        f = self.factor(self.intervals)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f


def hold_grad_accumulators(params: list[torch.Tensor]) -> list:
    """Each parameter's ``AccumulateGrad`` node, to be kept alive for the whole run.

    A parameter refers to its node weakly: once the last graph that used it is freed,
    the next forward builds a new one per parameter (roughly 20-30k instructions of a
    seed-mlp CPU step). A plain loop pays less, because its ``loss`` variable keeps the
    spent graph alive through the next forward. Holding the nodes themselves (as FSDP
    and DDP do to hook them) gives the reuse without keeping any graph: the loop frees
    each graph right after its backward, so a window's peak memory holds one graph.
    """
    with torch.enable_grad():
        return [p.expand_as(p).grad_fn.next_functions[0][0] for p in params]


def window_update(
    config: TrialConfig,
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    scaler: torch.amp.GradScaler | None,
    schedule: LRSchedule,
    keep_norm: Callable[[int, torch.Tensor], None],
    keep_scale: Callable[[torch.Tensor], None] | None = None,
) -> Callable[[int], None]:
    """The update that ends window ``step``: unscale, gradient norm (clipped, or sampled
    every ``grad_norm_every`` steps), optimizer step, zero_grad, per-step lr schedule.

    The norm stays a device tensor, handed to ``keep_norm`` for the next flush; with a
    GradScaler, so does the loss scale after ``update`` (``keep_scale``), from which the
    flush tells skipped steps (``bench.train_record``). A skipped step is still a step:
    it is counted, its samples are seen, and the schedule moves, as in torch's AMP recipe
    (``scaler.step``, ``scaler.update``, ``scheduler.step`` every iteration); only the
    parameters stay as they were. Built as a closure once per run: the step reads its
    settings from cells, not attributes.
    """
    clip, norm_every = config.grad_clip, config.grad_norm_every
    step_schedule = config.scheduler != "constant" and config.scheduler_interval != "epoch"
    optimizer_step, zero_grad, schedule_step = optimizer.step, optimizer.zero_grad, schedule.step
    clip_grad_norm, total_norm = nn.utils.clip_grad_norm_, nn.utils.get_total_norm
    one = None
    if scaler is not None:
        one = torch.ones((), device=params[0].device)
        keep_scale(scaler.scale(one))  # the initial scale: what the first step is seen against

    def update(step: int) -> None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # once per window, before the norm and the step
        if clip is not None:
            keep_norm(step, clip_grad_norm(params, clip, foreach=True))
        elif norm_every and step % norm_every == 0:
            keep_norm(
                step, total_norm([p.grad for p in params if p.grad is not None], foreach=True)
            )
        if scaler is None:
            optimizer_step()
        else:
            scaler.step(optimizer)
            scaler.update()
            # scale(one) is the scale as a new device tensor: public API, no host read.
            keep_scale(scaler.scale(one))
        zero_grad(set_to_none=True)
        if step_schedule:
            schedule_step()

    return update
