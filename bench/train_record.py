"""What the training loop records: a step's device results, read back only at flush points.

nanoGPT's comment: ``.item()`` is a sync point. Until the next flush the recorder holds,
per step, only what the device computed: the window's loss sum (and token count), the
sampled gradient norms, and the clock's marks. Every other column of a step row follows
from the plan and is made at flush time, off the step clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bench.meters.clock import StepClock
from bench.train_noise import Pending
from bench.train_optim import LRSchedule
from bench.train_windows import WindowPlan


@dataclass
class TrainOutcome:
    """What the loop observed. Filled as it goes, so a crash mid-run keeps what was flushed."""

    status: str = "ok"  # ok / diverged / failed (time limit)
    error: str | None = None
    stopped_early: bool = False
    rows: list[dict] = field(default_factory=list)  # one per flushed optimizer step
    step_seconds: list[float] = field(default_factory=list)  # per step, eval time excluded
    tokens_seen: int | None = None
    best_val_loss: float | None = None
    restored_val_loss: float | None = None  # restore_best: the reloaded weights' val loss
    skipped_steps: int | None = None  # fp16: steps GradScaler skipped (inf/nan gradients)
    b_simple: float | None = None  # the gradient noise scale over the run (bench.train_noise)
    epochs_run: int = 0
    timing_warmup_steps: int = 0  # steps actually excluded from throughput
    notes: list[str] = field(default_factory=list)

    @property
    def optimizer_steps(self) -> int:
        return len(self.rows)

    @property
    def micro_batches(self) -> int:
        return sum(row["micro_batches"] for row in self.rows)

    @property
    def samples_seen(self) -> int:
        return self.rows[-1]["samples_seen"] if self.rows else 0

    @property
    def final_loss(self) -> float | None:
        return self.rows[-1]["loss"] if self.rows else None


class StepRecorder:
    """Keeps each step's device tensors; ``flush`` turns them into ``outcome.rows``."""

    def __init__(
        self,
        outcome: TrainOutcome,
        windows: WindowPlan,
        clock: StepClock,
        schedule: LRSchedule,
        *,
        per_epoch_schedule: bool,
        token_unit: bool,
    ) -> None:
        self.outcome, self.windows, self.clock, self.schedule = outcome, windows, clock, schedule
        self.per_epoch_schedule, self.token_unit = per_epoch_schedule, token_unit
        self._losses: list[torch.Tensor] = []
        self._units: list[torch.Tensor] = []  # token workloads only
        self._norms: dict[int, torch.Tensor] = {}  # step -> global gradient norm
        self._noise: dict[int, Pending] = {}  # sampled step -> its noise-scale numbers
        self._scales: list[torch.Tensor] = []  # fp16: the loss scale after each step
        self._scale_before: float | None = None  # the scale before the first pending step
        # Bound once: the hot loop calls these every step.
        self.keep_loss = self._losses.append
        self.keep_units = self._units.append

    def keep_norm(self, step: int, norm: torch.Tensor) -> None:
        self._norms[step] = norm

    def keep_noise(self, step: int, pending: Pending | None) -> None:
        """Sampled step ``step``'s noise-scale numbers (None: not measured)."""
        if pending is not None:
            self._noise[step] = pending

    def keep_scale(self, scale: torch.Tensor) -> None:
        """GradScaler's scale after a step's ``update`` (first: the initial scale).

        ``update`` multiplies the scale by ``backoff_factor`` (< 1) exactly when the step
        found inf/nan gradients and skipped ``optimizer.step``, and otherwise keeps it or
        grows it: a step was skipped iff the scale after it is below the scale before.
        """
        if self.outcome.skipped_steps is None:
            self.outcome.skipped_steps = 0
        self._scales.append(scale)

    def flush(self) -> bool:
        """Read back pending losses and times; False when training must stop (diverged)."""
        if not self._losses:
            return True
        loss_sums = torch.stack(self._losses).double().tolist()  # one read for all steps
        tokens = [int(t) for t in torch.stack(self._units).tolist()] if self.token_unit else None
        ok = self.add_steps(
            loss_sums, self.clock.flush(), tokens=tokens, norms=self._read_norms(),
            noise=self._read_noise(), skipped=self._read_skipped(len(loss_sums)),
        )  # fmt: skip
        self._losses.clear()
        self._units.clear()
        self._norms.clear()
        self._noise.clear()
        self._scales.clear()
        return ok

    def step_columns(self, seconds: list[float]) -> list[dict]:
        """The columns of the next ``len(seconds)`` step rows that follow from the plan
        and the clock: the same for every member of a stack, so a stack makes them once."""
        rows = self.outcome.rows
        step, elapsed = (rows[-1]["step"], rows[-1]["time_s"]) if rows else (0, 0.0)
        columns = []
        for dt in seconds:
            step += 1
            elapsed += dt
            epoch, index = divmod(step - 1, self.windows.steps_per_epoch)
            window = self.windows.windows[index]
            columns.append({
                "epoch": epoch + 1,
                "step": step,
                "step_in_epoch": index + 1,
                "micro_batches": window.micro_batches,
                "samples": window.samples,
                "samples_seen": self.windows.samples_seen(step),
                "time_s": elapsed,
            })  # fmt: skip
        return columns

    def add_steps(
        self,
        loss_sums: list[float],
        seconds: list[float],
        *,
        tokens: list[int] | None = None,
        norms: dict[int, float] | None = None,
        noise: dict[int, float | None] | None = None,
        skipped: list[bool] | None = None,
        columns: list[dict] | None = None,
        lrs: list[float] | None = None,
    ) -> bool:
        """Rows for the next steps from their host values: each window's loss sum (the
        mean is per unit: the window's samples, or ``tokens``), step seconds, sampled
        gradient norms and noise scales by step, GradScaler's skips; ``columns`` and
        ``lrs`` where the caller has them already (a stack: ``step_columns``, the
        schedule's lrs). Stops at a non-finite loss: False, the run diverged."""
        outcome, norms, noise = self.outcome, norms or {}, noise or {}
        columns = columns or self.step_columns(seconds)
        for i, (shared, loss_sum, dt) in enumerate(zip(columns, loss_sums, seconds, strict=True)):
            step = shared["step"]
            units = tokens[i] if tokens is not None else shared["samples"]
            # A window of no units (all padding) has no mean: nan, as on the device. The
            # division is float64 either way, so Python's is the same number as the device's.
            loss = loss_sum / units if units else math.nan
            intervals = shared["epoch"] - 1 if self.per_epoch_schedule else step - 1
            outcome.rows.append({
                **shared,
                "tokens": tokens[i] if tokens is not None else None,
                "loss": loss,
                "lr": lrs[i] if lrs is not None else self.schedule.lr_at(intervals),
                "grad_norm": norms.get(step),
                "val_loss": None,
                "b_simple": noise.get(step),
            })  # fmt: skip
            outcome.step_seconds.append(dt)
            if skipped is not None:
                outcome.skipped_steps += skipped[i]
            if not math.isfinite(loss):
                outcome.status = "diverged"
                outcome.error = f"non-finite loss ({loss}) at step {step}"
                break
        return outcome.status == "ok"

    def drop_unfinished_window(self) -> None:
        """After an error mid-window: its token count, if taken, has no loss to go with."""
        del self._units[len(self._losses) :]

    def _read_skipped(self, n_steps: int) -> list[bool] | None:
        """Per pending step, whether GradScaler skipped it (None without a GradScaler)."""
        if not self._scales:
            return None
        scales = torch.stack(self._scales).tolist()  # one read for all steps
        if self._scale_before is None:
            self._scale_before = scales.pop(0)
        scales = scales[:n_steps]  # a step that raised after its update has no loss kept
        before = [self._scale_before, *scales[:-1]]
        self._scale_before = scales[-1] if scales else self._scale_before
        return [after < prior for prior, after in zip(before, scales, strict=True)]

    def _read_noise(self) -> dict[int, float | None]:
        """Step -> B_simple after each sampled step: one read for all pending windows."""
        if not self._noise:
            return {}
        pending = list(self._noise.values())
        flat = torch.cat([p.tensor for p in pending]).tolist()
        out, at = {}, 0
        for step, p in zip(self._noise, pending, strict=True):
            n = p.tensor.numel()
            out[step] = p.finish(flat[at : at + n])
            at += n
        return out

    def _read_norms(self) -> dict[int, float]:
        if not self._norms:
            return {}
        values = torch.stack(list(self._norms.values())).tolist()  # one read for all steps
        return dict(zip(self._norms, values, strict=True))
