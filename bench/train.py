"""The training loop: executes a Plan exactly, on CPU or CUDA.

What it gets right that the seed tutorial's accumulation loop does not:

- Windows never straddle an epoch: the epoch's trailing short window is either stepped
  on its own (``partial_window="step"``) or not computed at all (``"drop"``), and
  gradients are zeroed after every optimizer step, so nothing leaks into the next epoch.
- ``normalize="sample"`` weights each micro-batch's *summed* loss by the units (samples,
  or target tokens) of the whole window, so the accumulated gradient is exactly the
  gradient of the window's mean loss (``bench.train_windows``).

The step is the loop users write, through public PyTorch APIs only: forward, then
``loss.backward(weight)`` (``Tensor.backward``), ``torch.optim``'s step and zero_grad,
``nn.utils``' gradient norm and clipping, ``torch.amp``'s GradScaler.

Hot-loop rules (nanoGPT's comment: ``.item()`` is a sync point): losses, gradient norms
and token counts stay on the device and are read back at flush points (every
``flush_every`` steps, at evaluations and at the end: ``bench.train_record``); step
times come from ``StepClock`` the same way. Where the loop looks up from training is
decided by ``bench.train_events``. Every ``noise_scale_every`` steps the window runs
through ``bench.train_noise``, which measures the gradient noise scale B_simple on the
way (the same gradient; its numbers are read at the next flush).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.config import TrialConfig
from bench.meters.clock import StepClock
from bench.plan import Plan
from bench.train_data import Batches, cast_batch
from bench.train_events import EarlyStopping, EventSchedule, evaluate
from bench.train_noise import NoiseScale
from bench.train_optim import (
    LRSchedule,
    autocast_context,
    build_optimizer,
    fused_step_wanted,
    hold_grad_accumulators,
    lr_factor,
    model_dtype,
    window_update,
)
from bench.train_record import StepRecorder, TrainOutcome
from bench.train_windows import WindowPlan
from bench.workloads.base import Workload

__all__ = ["TrainOutcome", "host_sync_point", "train"]


@contextlib.contextmanager
def host_sync_point(device: torch.device):
    """Where the loop may synchronise with the device: set-up, epoch starts, flushes,
    evaluation, warm-up end.

    Under ``torch.cuda.set_sync_debug_mode("error")`` (the test that proves the hot loop
    never syncs) these are the only places a sync is allowed.
    """
    if device.type != "cuda":
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def train(
    config: TrialConfig,
    workload: Workload,
    plan: Plan,
    device: torch.device,
    *,
    model: nn.Module | None = None,
    outcome: TrainOutcome | None = None,
    on_window_start: Callable[[], None] | None = None,
    parallel: Any = None,
) -> tuple[nn.Module, TrainOutcome]:
    """Train ``workload`` following ``plan``. Returns the model and what was observed.

    ``on_window_start`` is called (device synchronised) when timing warm-up is over and
    the measured window opens; meters hook energy and the like there.

    ``parallel`` (a :class:`bench.ddp.rank.RankHooks`) makes this process one rank of a
    data-parallel run: ``plan`` is then the global plan, the forward goes through its DDP
    wrapper, each micro-batch is this rank's share, and losses are summed across ranks
    at the end. The loop itself is the same.
    """
    outcome = outcome if outcome is not None else TrainOutcome()
    run = _Run(config, workload, plan, device, model, outcome, on_window_start, parallel)
    run.loop()
    if parallel is not None:
        parallel.finish(outcome)
    del run.accumulators  # held to here (see hold_grad_accumulators)
    run.early_stopping.restore_best(run.model, outcome)
    return run.model, outcome


def _placed_model(
    config: TrialConfig, workload: Workload, device: torch.device, model: nn.Module | None
) -> nn.Module:
    """The model (built from the seed unless given) on the device, in the run's dtype."""
    if model is None:
        torch.manual_seed(config.seed)
        model = workload.make_model()
    with host_sync_point(device):  # set-up copies to the device, before any timing
        model.to(device=device, dtype=model_dtype(config.precision))
    model.train()
    return model


class _Run:
    """One call of ``train``: its parts, built once, and the loop over them."""

    def __init__(
        self,
        config: TrialConfig,
        workload: Workload,
        plan: Plan,
        device: torch.device,
        model: nn.Module | None,
        outcome: TrainOutcome,
        on_window_start: Callable[[], None] | None,
        parallel: Any = None,
    ) -> None:
        self.config, self.workload, self.plan, self.device = config, workload, plan, device
        self.outcome, self.on_window_start = outcome, on_window_start
        self.model = _placed_model(config, workload, device, model)
        # What the loop's forward calls: the model, or its DDP wrapper on a rank.
        self.parallel = parallel
        self.forward_model = self.model if parallel is None else parallel.wrap(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.accumulators = hold_grad_accumulators(self.params)
        self.optimizer = self._optimizer()
        self.per_epoch_schedule = config.scheduler_interval == "epoch"
        total_intervals = plan.epochs_run if self.per_epoch_schedule else plan.total_steps
        self.schedule = LRSchedule(self.optimizer, lr_factor(config, total_intervals))
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
        mixed = config.precision in ("bf16", "fp16")
        self.autocast = autocast_context(device, config.precision) if mixed else None
        dtype = model_dtype(config.precision)
        with host_sync_point(device):
            self.batches = Batches(config, workload, plan, device, dtype)
            self.val = cast_batch(workload.val, device, dtype)
        if parallel is not None:  # this rank's share of each (global) micro-batch
            self.batches.slices = parallel.rank_slices(self.batches.slices)
        self.token_unit = workload.unit != "sample"
        self.events = EventSchedule(config, plan)
        outcome.timing_warmup_steps = self.events.warmup_steps
        if self.events.warmup_steps == 0 and on_window_start is not None:
            on_window_start()
        self.early_stopping = EarlyStopping(config)
        self.windows = WindowPlan(
            plan,
            token_unit=self.token_unit,
            sample_normalised=config.normalize == "sample",
            dtype=dtype,
            device=device,
            world_size=1 if parallel is None else parallel.world_size,
            reduce_units=None if parallel is None else parallel.reduce_units,
        )
        self.noise = NoiseScale(
            self.model,
            self.params,
            # Under DDP a rank's micro-batch gradients are its own until the window's
            # all-reduce, so .grad differences would mix local and averaged gradients.
            every=config.noise_scale_every if parallel is None else 0,
            sample_normalised=config.normalize == "sample",
            accumulation_steps=plan.accumulation_steps,
            scaler=self.scaler,
        )
        self.clock = StepClock(device)
        self.recorder = StepRecorder(
            outcome,
            self.windows,
            self.clock,
            self.schedule,
            per_epoch_schedule=self.per_epoch_schedule,
            token_unit=self.token_unit,
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        fused = fused_step_wanted(self.config, self.device)
        if fused:
            self.outcome.notes.append(
                "fp16 on CUDA: fused optimizer step (GradScaler's inf check stays on the device)"
            )
        return build_optimizer(self.config, self.params, fused=fused)

    def loop(self) -> None:
        """Epochs of windows of micro-batches. Between events only the device works: no
        host read, no per-step bookkeeping beyond the clock's mark and the kept loss."""
        # Per step the loop touches only locals: each attribute lookup saved is ~20 ns of
        # a step that is ~100 us on the CPU for the smallest workloads.
        plan, device, outcome, recorder, clock = (
            self.plan, self.device, self.outcome, self.recorder, self.clock,
        )  # fmt: skip
        model, loss_of, units_of = self.forward_model, self.workload.loss_sum, self.workload.units
        autocast, scaler, batches = self.autocast, self.scaler, self.batches
        step_windows = [(w.micro_batches, w.weights) for w in self.windows.windows]
        if self.parallel is not None:  # no_sync on a window's first k - 1 forwards
            loss_of = self.parallel.loss_fn(loss_of, [n for n, _ in step_windows])
        noise = self.noise

        def micro_step(batch, weight):
            """Forward and weighted backward of one micro-batch; its detached loss sum."""
            if autocast is None:
                loss_sum = loss_of(model, batch)
            else:
                with autocast:
                    loss_sum = loss_of(model, batch)
            seed = loss_sum if scaler is None else scaler.scale(loss_sum)
            # d(loss_sum * weight)/d(theta): the gradient of loss_sum / units. The spent
            # graph is freed on return (``seed`` and ``loss_sum`` were its last holders).
            seed.backward(weight)
            return loss_sum.detach()

        token_window, keep_units = self.windows.token_window, recorder.keep_units
        update = window_update(
            self.config, self.optimizer, self.params, scaler, self.schedule, recorder.keep_norm,
            recorder.keep_scale,
        )  # fmt: skip
        mark, keep_loss, keep_noise = clock.mark, recorder.keep_loss, recorder.keep_noise
        order_generator = torch.Generator().manual_seed(self.config.seed)
        global_step, stop = 0, False
        event, noise_at = self.events.next(0), noise.next_due(0)
        clock.start()
        try:
            for epoch in range(1, plan.epochs_run + 1):
                outcome.epochs_run = epoch
                order = torch.randperm(plan.samples, generator=order_generator)
                with host_sync_point(device):  # an epoch boundary: the order goes to the device
                    micro = batches.epoch(order)
                for n_micro, weights in step_windows:
                    global_step += 1
                    if weights is None:  # token units: the window's total before any backward
                        window_batches, weights, window_units = token_window(
                            micro, n_micro, units_of
                        )
                        keep_units(window_units)
                    else:
                        window_batches = micro
                    if global_step == noise_at:
                        window_loss, measured = noise.window(
                            micro_step, window_batches, weights, units_of
                        )
                        keep_noise(global_step, measured)
                        noise_at = noise.next_due(global_step)
                    else:
                        window_loss = None
                        for weight in weights:
                            loss_sum = micro_step(next(window_batches), weight)
                            window_loss = (
                                loss_sum if window_loss is None else window_loss + loss_sum
                            )
                    update(global_step)
                    mark()
                    keep_loss(window_loss)
                    if global_step < event:
                        continue
                    if self._stop_at_event(global_step):
                        stop = True
                        break
                    event = self.events.next(global_step)
                    # The flush and any evaluation were the harness's time, not training's:
                    # the next step is timed from here (its wall share shows in window_wall_s).
                    clock.resume()
                if stop:
                    break
                if self.per_epoch_schedule:
                    self.schedule.step()
            with host_sync_point(device):
                recorder.flush()
        except BaseException:
            # An OOM or error mid-run: the steps completed since the last flush are real and
            # are kept (their count, samples and losses); the read-back may fail too after a
            # CUDA OOM, and then the error being raised is what matters.
            recorder.drop_unfinished_window()
            with contextlib.suppress(Exception), host_sync_point(device):
                recorder.flush()
            raise
        finally:
            outcome.b_simple = noise.trial_value()  # of the windows flushed: host numbers
            if self.token_unit:
                outcome.tokens_seen = sum(outcome.steps["tokens"])

    def _stop_at_event(self, step: int) -> bool:
        """Flush, evaluate if due, open the measured window after warm-up; True to stop."""
        outcome, device = self.outcome, self.device
        with host_sync_point(device):
            if not self.recorder.flush():
                return True
        if self.events.eval_due(step):
            with host_sync_point(device):
                val_loss = evaluate(
                    self.model, self.workload, self.val, self.plan.micro_batch_size,
                    device, self.config.precision,
                )  # fmt: skip
                outcome.steps.set_last("val_loss", val_loss)
                if self.early_stopping.update(val_loss, self.model, step, outcome):
                    return True
        if step == self.events.warmup_steps and self.on_window_start is not None:
            # After this step's evaluation: the window (energy, ...) holds timed steps only.
            with host_sync_point(device):
                self.clock.synchronize()
                self.on_window_start()
        if step == self.events.total_steps:
            return True
        error = self.events.out_of_time(step)
        if error is not None:
            outcome.status, outcome.error = "failed", error
            return True
        return False
