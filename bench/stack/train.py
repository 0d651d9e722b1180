"""The stacked training loop: S members of one stack key trained as one vectorised model.

Each member is what its solo run (``bench.train``) is: the model built from its seed
(``torch.manual_seed(seed); workload.make_model()``), its own seeded permutation of the
data each epoch, the same windows and loss weights (``bench.train_windows``), its own
LR schedule (``bench.train_optim.lr_factor`` through ``LRSchedule``), optimizer state
(``bench.stack.optim``), losses, gradient norms, evaluations and step rows (a
``StepRecorder`` each, handed its rows at each flush). The members' parameters are
stacked on dim 0 (``torch.func.stack_module_state``). A plain MLP classifier trains
with its gradients written out as batched matrix products (``bench.stack.mlp``); any
other model runs as ``vmap`` of ``functional_call`` over the members and their gathered
micro-batches, with autograd on the stacked leaves seeded per member with the window
weight. Either way member i's gradient is exactly d(loss_i * w)/d(theta_i).

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

from bench.config import TIME_LIMIT_MAX_S, TrialConfig
from bench.meters.clock import StepClock
from bench.plan import Plan
from bench.stack.mlp import stacked_mlp
from bench.stack.optim import stacked_optimizer
from bench.train import host_sync_point
from bench.train_data import cast_batch
from bench.train_events import EarlyStopping, EventSchedule
from bench.train_optim import LRSchedule, hold_grad_accumulators, lr_factor, model_dtype
from bench.train_record import StepRecorder, TrainOutcome
from bench.train_windows import WindowPlan
from bench.workloads.base import Workload

# The rows gathered for a chunk of micro-batches (``_StackRun._micro_batches``). Seed-mlp
# at S = 32, a micro-batch of the epoch: 27 us one at a time, 9.7 us in chunks of 1 MiB
# (21 micro-batches), 19 us in chunks of 4 MiB, whose fresh pages cost more than the
# gather's fixed cost they share.
CHUNK_BYTES = 1 << 20
SCHEDULE_SETTINGS = ("lr", "scheduler", "scheduler_interval", "warmup", "step_size", "gamma")


class _BaseLR:
    """The one param group an ``LRSchedule`` needs: a member's schedule without a
    torch optimizer (the stacked optimizer takes the lrs as a tensor)."""

    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr}]


@dataclass
class Member:
    config: TrialConfig
    outcome: TrainOutcome
    schedule: LRSchedule
    recorder: StepRecorder
    early_stopping: EarlyStopping
    per_epoch: bool
    schedule_key: tuple
    active: bool = True


def _functional_model(base: nn.Module, params: dict, buffers: dict) -> Callable:
    """A callable standing in for one member's model inside ``vmap``."""
    return lambda *args: functional_call(base, (params, buffers), args)


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


def _chunk_micro_batches(data: tuple, size: int, micro_batch: int) -> int:
    """How many micro-batches ``_micro_batches`` gathers at once: about CHUNK_BYTES of
    gathered rows for the whole stack, at least one micro-batch."""
    row_bytes = sum(t[0].numel() * t.element_size() for t in data)
    return max(1, CHUNK_BYTES // max(1, size * micro_batch * row_bytes))


class _StackRun:
    def __init__(self, configs, workload, plan, device, on_window_start) -> None:
        first = configs[0]
        self.workload, self.plan, self.device = workload, plan, device
        self.on_window_start, self.size = on_window_start, len(configs)
        self.dtype = dtype = model_dtype(first.precision)
        models = []
        for c in configs:
            # Each member's init exactly as its solo run's: the model is built on the
            # CPU, so the CPU generator is all torch.manual_seed seeds that matters here,
            # without its ~0.7 ms a call of queueing CUDA's seeding (with a traceback).
            torch.default_generator.manual_seed(c.seed)
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
        self.members = [self._member(c) for c in configs]
        # Members with equal schedule settings have equal lrs: each is computed once.
        self.schedules: dict[tuple, Member] = {}
        for m in self.members:
            self.schedules.setdefault(m.schedule_key, m)
        self.schedule_index = [list(self.schedules).index(m.schedule_key) for m in self.members]
        self.mlp = stacked_mlp(models[0], workload, self.params)
        self.vmap_loss = vmap(self._member_loss)
        self.accumulate = self._autograd_step if self.mlp is None else self._mlp_step
        self.slices = [plan.micro_batch_slice(m) for m in range(plan.micro_batches_per_epoch)]
        self.chunk = _chunk_micro_batches(self.train_data, self.size, plan.micro_batch_size)

    def _member(self, config: TrialConfig) -> Member:
        per_epoch = config.scheduler_interval == "epoch"
        total = self.plan.epochs_run if per_epoch else self.plan.total_steps
        schedule = LRSchedule(_BaseLR(config.lr), lr_factor(config, total))
        outcome = TrainOutcome(timing_warmup_steps=self.events.warmup_steps)
        recorder = StepRecorder(
            outcome, self.windows, None, schedule, per_epoch_schedule=per_epoch, token_unit=False
        )  # the stack hands each recorder its rows' host values (_flush)
        key = tuple(getattr(config, name) for name in SCHEDULE_SETTINGS)
        return Member(config, outcome, schedule, recorder, EarlyStopping(config), per_epoch, key)

    def _mlp_step(self, batch: tuple, weight: torch.Tensor, first: bool) -> torch.Tensor:
        return self.mlp.train_step(batch, weight, first)

    def _autograd_step(self, batch: tuple, weight: torch.Tensor, first: bool) -> torch.Tensor:
        """Each member's loss sum (S,); adds d(loss_i * weight)/d(theta_i) to the grads
        (which the loop sets to None after each step: ``first`` needs nothing here)."""
        loss_sums = self.vmap_loss(self.params, self.buffers, batch)
        loss_sums.backward(weight.expand_as(loss_sums))
        return loss_sums.detach()

    def _val_loss_sums(self, batch: tuple) -> torch.Tensor:
        """Every member's loss sum (S,) on one shared validation chunk."""
        if self.mlp is not None:
            x, y = batch
            shared = (x.expand(self.size, *x.shape), y.expand(self.size, *y.shape))
            return self.mlp.loss_sums(shared)
        return vmap(self._member_loss, in_dims=(0, 0, None))(self.params, self.buffers, batch)

    def _member_loss(self, params: dict, buffers: dict, batch: tuple) -> torch.Tensor:
        return self.workload.loss_sum(_functional_model(self.base, params, buffers), batch)

    def _schedule_lrs(self, steps: range) -> list[list[float]]:
        """Per distinct schedule, the lr of each of ``steps`` (global, from 1): the
        schedule's own arithmetic (``LRSchedule.lr_at``)."""
        spe = self.windows.steps_per_epoch
        return [
            [m.schedule.lr_at((s - 1) // spe if m.per_epoch else s - 1) for s in steps]
            for m in self.schedules.values()
        ]

    def _epoch_lrs(self, epoch: int) -> torch.Tensor:
        """(steps of the epoch, S): the lr each member's update uses at each step; 0 for
        a masked member."""
        first_step = (epoch - 1) * self.windows.steps_per_epoch + 1
        table = self._schedule_lrs(range(first_step, first_step + self.windows.steps_per_epoch))
        lrs = torch.tensor(table, dtype=self.dtype)[self.schedule_index].T.contiguous()
        lrs[:, [i for i, m in enumerate(self.members) if not m.active]] = 0.0
        return lrs.to(self.device)

    def _epoch_orders(self, generators: list[torch.Generator]) -> torch.Tensor:
        orders = torch.stack([torch.randperm(self.plan.samples, generator=g) for g in generators])
        return orders.to(self.device)

    def _micro_batches(self, orders: torch.Tensor):
        """Each micro-batch of the epoch as (S, b, ...) views: member i's rows in its
        order, gathered ``self.chunk`` micro-batches at a time (one index_select per
        tensor and chunk, ``CHUNK_BYTES``)."""
        size, slices = self.size, self.slices
        for first in range(0, len(slices), self.chunk):
            chunk = slices[first : first + self.chunk]
            begin, end = chunk[0][0], chunk[-1][1]
            index = orders[:, begin:end].reshape(-1)
            parts = [
                t.index_select(0, index).view(size, end - begin, *t.shape[1:])
                for t in self.train_data
            ]
            if end - begin == len(chunk) * self.plan.micro_batch_size:  # no short one
                micro_batches = zip(
                    *[p.unflatten(1, (len(chunk), -1)).unbind(1) for p in parts], strict=True
                )
            else:
                micro_batches = (
                    tuple(p[:, start - begin : stop - begin] for p in parts)
                    for start, stop in chunk
                )
            yield from micro_batches
            del parts, micro_batches  # the next gather must not hold this chunk's rows too

    def loop(self) -> None:
        plan, clock, members = self.plan, self.clock, self.members
        generators = [torch.Generator().manual_seed(m.config.seed) for m in members]
        step_weights = [w.weights for w in self.windows.windows]
        accumulate, leaves, autograd = self.accumulate, self.leaves, self.mlp is None
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
                step_lrs = lrs.unbind(0)  # views: a member masked later gets 0 in them too
                for index, weights in enumerate(step_weights):
                    global_step += 1
                    window_loss = accumulate(next(micro), weights[0], True)
                    for weight in weights[1:]:
                        window_loss = window_loss + accumulate(next(micro), weight, False)
                    if norm_every and global_step % norm_every == 0:
                        norms[global_step] = self._grad_norms()
                    self.optimizer.step(step_lrs[index])
                    for p in leaves if autograd else ():  # the MLP's grads are written over
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
        """Hand each active member its losses, norms, lrs and the stack's seconds per
        member (one device read for all); mask the members that diverged."""
        active = [i for i, m in enumerate(self.members) if m.active]
        if not losses or not active:
            losses.clear()
            norms.clear()
            return
        seconds = [s / self.size for s in self.clock.flush()]
        per_member = torch.stack(losses).T.double().tolist()  # S lists of loss sums
        norm_values = torch.stack(list(norms.values())).T.tolist() if norms else None
        # Every active member has the same rows so far: its columns are the stack's.
        columns = self.members[active[0]].recorder.step_columns(seconds)
        steps = columns["step"]
        table = self._schedule_lrs(range(steps[0], steps[-1] + 1))
        for i in active:
            member_norms = dict(zip(norms, norm_values[i], strict=True)) if norms else None
            if not self.members[i].recorder.add_steps(
                per_member[i], seconds, norms=member_norms, columns=columns,
                lrs=table[self.schedule_index[i]],
            ):  # fmt: skip
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
        arithmetic: the model in eval mode, chunks of b, float64 sums)."""
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        units = 0
        n, chunk = self.val[0].shape[0], self.plan.micro_batch_size
        self.base.eval()  # normalisation layers use their running statistics
        try:
            for start in range(0, n, chunk):
                batch = tuple(t[start : start + chunk] for t in self.val)
                total += self._val_loss_sums(batch).double()
                units += self.workload.units(batch)
        finally:
            self.base.train()
        values = (total / units).tolist()
        for i, m in enumerate(self.members):
            if not m.active:
                continue
            m.outcome.steps.set_last("val_loss", values[i])
            if m.early_stopping.update(values[i], None, step, m.outcome):
                self._mask(i, lrs)
