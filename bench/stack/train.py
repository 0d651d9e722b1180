"""The stacked training loop: S members of one stack key trained as one vectorised model.

Each member is what its solo run (``bench.train``) is: the model built from its seed
(``torch.manual_seed(seed); workload.make_model()``), its own seeded permutation of the
data each epoch, the same windows and loss weights (``bench.train_windows``), its own
LR schedule (``bench.train_optim.lr_factor`` through ``LRSchedule``), optimizer state
(``bench.stack.optim``), losses, gradient norms, evaluations and step rows (a
``StepRecorder`` each). The members' parameters are stacked on dim 0
(``torch.func.stack_module_state``) and the forward is ``vmap`` of ``functional_call``
over them and over each member's gathered micro-batch; the backward is ordinary
autograd on the stacked leaves, seeded per member with the window weight, so member
i's gradient is exactly d(loss_i * w)/d(theta_i).

A member whose loss turns non-finite is recorded ``diverged`` at the flush that sees it
(as its solo run is) and masked: its parameters and optimizer state are zeroed and its
lr is 0, so nothing non-finite flows through the stack afterwards; the other members'
arithmetic never mixes with its slice.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from bench.config import TIME_LIMIT_MAX_S, TrialConfig
from bench.meters.clock import StepClock
from bench.plan import Plan
from bench.stack.optim import stacked_optimizer
from bench.train import host_sync_point
from bench.train_data import cast_batch
from bench.train_events import EarlyStopping, EventSchedule
from bench.train_optim import LRSchedule, hold_grad_accumulators, lr_factor, model_dtype
from bench.train_record import StepRecorder, TrainOutcome
from bench.train_windows import WindowPlan
from bench.workloads.base import ClassificationWorkload, Workload


class _BaseLR:
    """The one param group an ``LRSchedule`` needs: a member's schedule without a
    torch optimizer (the stacked optimizer takes the lrs as a tensor)."""

    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr}]


class _SharedSeconds:
    """A member's view of the stack's StepClock: each step's seconds divided by S (the
    stack's cost per member), read once per flush by the loop and handed to every
    member's recorder."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def flush(self) -> list[float]:
        return self.seconds


@dataclass
class Member:
    config: TrialConfig
    outcome: TrainOutcome
    schedule: LRSchedule
    recorder: StepRecorder
    early_stopping: EarlyStopping
    per_epoch: bool
    active: bool = True


def _functional_model(base: nn.Module, params: dict, buffers: dict) -> Callable:
    """A callable standing in for one member's model inside ``vmap``."""
    return lambda *args: functional_call(base, (params, buffers), args)


def stacked_forward(model: nn.Module, workload: Workload) -> Callable | None:
    """The stack's loss sums (S,) for an MLP classifier (``nn.Sequential`` of Linear and
    ReLU, cross-entropy summed per member), as batched matrix products: the same
    arithmetic as ``vmap`` of ``functional_call`` without its ~1 ms of Python per
    micro-batch. None for any other model or loss (then ``vmap`` runs it)."""
    plain_loss = type(workload).loss_sum is ClassificationWorkload.loss_sum
    layers = list(model) if isinstance(model, nn.Sequential) else []
    if not plain_loss or not layers or any(type(m) not in (nn.Linear, nn.ReLU) for m in layers):
        return None
    names = [(f"{i}.weight", f"{i}.bias") if type(m) is nn.Linear else None
             for i, m in enumerate(layers)]  # fmt: skip

    def forward(params: dict, buffers: dict, batch: tuple) -> torch.Tensor:
        x, y = batch
        for layer in names:
            if layer is None:
                x = torch.relu(x)
            else:  # x (S, b, in) @ weight (S, out, in)^T + bias (S, 1, out)
                x = torch.baddbmm(
                    params[layer[1]].unsqueeze(1), x, params[layer[0]].transpose(1, 2)
                )
        losses = F.cross_entropy(x.flatten(0, 1), y.flatten(), reduction="none")
        return losses.view(y.shape).sum(1)

    return forward


def train_stack(
    configs: list[TrialConfig],
    workload: Workload,
    plan: Plan,
    device: torch.device,
    *,
    on_window_start: Callable[[], None] | None = None,
) -> list[TrainOutcome]:
    """Train every config of one stack (``bench.stack.group.stack_key`` equal) together;
    one TrainOutcome per member, in order."""
    run = _StackRun(configs, workload, plan, device, on_window_start)
    run.loop()
    return [m.outcome for m in run.members]


class _StackRun:
    def __init__(self, configs, workload, plan, device, on_window_start) -> None:
        first = configs[0]
        self.workload, self.plan, self.device = workload, plan, device
        self.on_window_start, self.size = on_window_start, len(configs)
        self.dtype = dtype = model_dtype(first.precision)
        models = []
        for c in configs:
            torch.manual_seed(c.seed)  # each member's init, exactly as its solo run
            models.append(workload.make_model().to(device=device, dtype=dtype).train())
        with host_sync_point(device):
            self.params, self.buffers = stack_module_state(models)
            self.train_data = cast_batch(workload.train, device, dtype)
            self.val = cast_batch(workload.val, device, dtype)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.leaves = list(self.params.values())
        self.accumulators = hold_grad_accumulators(self.leaves)
        hyper = {  # an unset weight decay is torch's default for the optimizer
            name: torch.tensor([getattr(c, attr) for c in configs], dtype=dtype, device=device)
            for name, attr in (("momentum", "momentum"), ("weight_decay", "effective_weight_decay"))
        }
        self.optimizer = stacked_optimizer(
            first.optimizer, self.leaves, hyper["momentum"], hyper["weight_decay"]
        )
        self.windows = WindowPlan(
            plan, token_unit=False, sample_normalised=first.normalize == "sample",
            dtype=dtype, device=device,
        )  # fmt: skip
        # A member's time limit holds for its share of the stack's time: the stack's
        # deadline is S limits away.
        limit = first.time_limit_s
        timed = (
            first
            if limit is None
            else first.replace(time_limit_s=min(limit * len(configs), TIME_LIMIT_MAX_S))
        )
        self.events = EventSchedule(timed, plan)
        self.clock = StepClock(device)
        self.seconds = _SharedSeconds()
        self.members = [self._member(c) for c in configs]
        self.forward = stacked_forward(models[0], workload) or vmap(self._member_loss)
        self.evaluate_stack = vmap(self._member_loss)
        self.slices = [plan.micro_batch_slice(m) for m in range(plan.micro_batches_per_epoch)]

    def _member(self, config: TrialConfig) -> Member:
        per_epoch = config.scheduler_interval == "epoch"
        total = self.plan.epochs_run if per_epoch else self.plan.total_steps
        schedule = LRSchedule(_BaseLR(config.lr), lr_factor(config, total))
        outcome = TrainOutcome(timing_warmup_steps=self.events.warmup_steps)
        recorder = StepRecorder(
            outcome, self.windows, self.seconds, schedule,
            per_epoch_schedule=per_epoch, token_unit=False,
        )  # fmt: skip
        return Member(config, outcome, schedule, recorder, EarlyStopping(config), per_epoch)

    def _member_loss(self, params: dict, buffers: dict, batch: tuple) -> torch.Tensor:
        return self.workload.loss_sum(_functional_model(self.base, params, buffers), batch)

    def _epoch_lrs(self, epoch: int) -> torch.Tensor:
        """(steps of the epoch, S): the lr each member's update uses at each step; 0 for
        a masked member. The schedule's own arithmetic (``LRSchedule.lr_at``)."""
        first_step = (epoch - 1) * self.windows.steps_per_epoch + 1
        rows = []
        for s in range(first_step, first_step + self.windows.steps_per_epoch):
            rows.append([
                (m.schedule.lr_at(epoch - 1 if m.per_epoch else s - 1) if m.active else 0.0)
                for m in self.members
            ])  # fmt: skip
        return torch.tensor(rows, dtype=self.dtype, device=self.device)

    def _epoch_orders(self, generators: list[torch.Generator]) -> torch.Tensor:
        orders = torch.stack([torch.randperm(self.plan.samples, generator=g) for g in generators])
        return orders.to(self.device)

    def _micro_batches(self, orders: torch.Tensor):
        """Each micro-batch of the epoch as (S, b, ...) tensors: member i's rows in its order."""
        size = self.size
        for start, stop in self.slices:
            index = orders[:, start:stop].reshape(-1)
            yield tuple(
                t.index_select(0, index).view(size, stop - start, *t.shape[1:])
                for t in self.train_data
            )

    def loop(self) -> None:
        plan, clock, members = self.plan, self.clock, self.members
        generators = [torch.Generator().manual_seed(m.config.seed) for m in members]
        step_windows = [(w.micro_batches, w.weights) for w in self.windows.windows]
        forward, params, buffers, leaves = self.forward, self.params, self.buffers, self.leaves
        losses: list[torch.Tensor] = []
        norms: dict[int, torch.Tensor] = {}
        norm_every = members[0].config.grad_norm_every
        global_step, event = 0, self.events.next(0)
        if self.events.warmup_steps == 0 and self.on_window_start is not None:
            self.on_window_start()
        clock.start()
        try:
            for epoch in range(1, plan.epochs_run + 1):
                for m in members:
                    if m.active:
                        m.outcome.epochs_run = epoch
                with host_sync_point(self.device):
                    orders = self._epoch_orders(generators)
                    lrs = self._epoch_lrs(epoch)
                micro = self._micro_batches(orders)
                for index, (_n_micro, weights) in enumerate(step_windows):
                    global_step += 1
                    window_loss = None
                    for weight in weights:
                        loss_sums = forward(params, buffers, next(micro))
                        loss_sums.backward(weight.expand_as(loss_sums))
                        loss_sums = loss_sums.detach()
                        window_loss = loss_sums if window_loss is None else window_loss + loss_sums
                    if norm_every and global_step % norm_every == 0:
                        norms[global_step] = self._grad_norms()
                    self.optimizer.step(lrs[index])
                    for p in leaves:
                        p.grad = None
                    clock.mark()
                    losses.append(window_loss)
                    if global_step < event:
                        continue
                    if self._event(global_step, losses, norms, lrs):
                        return
                    event = self.events.next(global_step)
                    clock.resume()
                # per-epoch schedules: the next epoch's lrs come from _epoch_lrs
            with host_sync_point(self.device):
                self._flush(losses, norms, lrs)
        except BaseException:
            with contextlib.suppress(Exception), host_sync_point(self.device):
                self._flush(losses, norms, None)
            raise
        finally:
            del self.accumulators

    def _grad_norms(self) -> torch.Tensor:
        """Each member's global gradient norm (``nn.utils.get_total_norm``'s arithmetic)."""
        per_param = [torch.linalg.vector_norm(p.grad.flatten(1), dim=1) for p in self.leaves]
        return torch.linalg.vector_norm(torch.stack(per_param), dim=0)

    def _event(self, step: int, losses, norms, lrs) -> bool:
        """Flush, evaluate if due, open the measured window; True when the stack stops."""
        with host_sync_point(self.device):
            self._flush(losses, norms, lrs)
            if self.events.eval_due(step):
                self._evaluate(step, lrs)
            if step == self.events.warmup_steps and self.on_window_start is not None:
                self.clock.synchronize()
                self.on_window_start()
        if step == self.events.total_steps or not any(m.active for m in self.members):
            return True
        error = self.events.out_of_time(step)
        for m in self.members if error else ():
            if m.active:
                m.outcome.status, m.outcome.error = "failed", f"{error} (a stack of {self.size})"
        return error is not None

    def _flush(self, losses: list, norms: dict, lrs: torch.Tensor | None) -> None:
        """Hand each active member its losses, norms and per-member seconds; mask the
        members that diverged."""
        if not losses:
            return
        self.seconds.seconds = [s / self.size for s in self.clock.flush()]
        per_step = torch.stack(losses).unbind(1)  # (S,) views of (steps,) each
        norm_steps = list(norms)
        norm_values = torch.stack(list(norms.values())).unbind(1) if norms else ()
        for i, m in enumerate(self.members):
            if not m.active:
                continue
            for loss in per_step[i].unbind():
                m.recorder.keep_loss(loss)
            for step, values in zip(
                norm_steps, norm_values[i].unbind() if norms else (), strict=True
            ):
                m.recorder.keep_norm(step, values)
            if not m.recorder.flush():
                self._mask(i, lrs)
        losses.clear()
        norms.clear()

    def _mask(self, member: int, lrs: torch.Tensor | None) -> None:
        self.members[member].active = False
        with torch.no_grad():
            for p in self.leaves:
                p[member].zero_()
            self.optimizer.reset_member(member)
            if lrs is not None:
                lrs[:, member] = 0.0

    @torch.no_grad()
    def _evaluate(self, step: int, lrs: torch.Tensor) -> None:
        """Every active member's mean validation loss (``bench.train_events.evaluate``'s
        arithmetic: chunks of b, float64 sums)."""
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        units = 0
        n, chunk = self.val[0].shape[0], self.plan.micro_batch_size
        for start in range(0, n, chunk):
            batch = tuple(t[start : start + chunk] for t in self.val)
            total += vmap(self._member_loss, in_dims=(0, 0, None))(
                self.params, self.buffers, batch
            ).double()
            units += self.workload.units(batch)
        values = (total / units).tolist()
        for i, m in enumerate(self.members):
            if not m.active:
                continue
            m.outcome.rows[-1]["val_loss"] = values[i]
            if m.early_stopping.update(values[i], None, step, m.outcome):
                self._mask(i, lrs)
