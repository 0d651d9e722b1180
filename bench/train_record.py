"""What the training loop records: a step's device results, read back only at flush points.

nanoGPT's comment: ``.item()`` is a sync point. Until the next flush the recorder holds,
per step, only what the device computed: the window's loss sum (and token count), the
sampled gradient norms, and the clock's marks. Every other column of a step row follows
from the plan and is made at flush time, off the step clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from bench.meters.clock import StepClock
from bench.records import StepRecord
from bench.train_noise import Pending
from bench.train_optim import LRSchedule
from bench.train_windows import WindowPlan

# The steps table's columns but trial_key, in its order.
ROW_COLUMNS = tuple(f.name for f in dataclasses.fields(StepRecord))[1:]
# Those that follow from the plan and the clock alone (StepRecorder.step_columns).
PLAN_COLUMNS = (
    "epoch",
    "step",
    "step_in_epoch",
    "micro_batches",
    "samples",
    "samples_seen",
    "time_s",
)


class StepColumns:
    """A trial's step rows, one per flushed optimizer step, kept as a list per column.

    Columns, not a dict per row: a stack of S members adds each flush's rows to S of
    these, and their steps tables are made from them; at seed-mlp's size, dict rows
    and tables made from them cost a third of a stacked step."""

    def __init__(self) -> None:
        self.data: dict[str, list] = {name: [] for name in ROW_COLUMNS}

    def __len__(self) -> int:
        return len(self.data["step"])

    def __getitem__(self, name: str) -> list:
        """One column (the list itself: read it, do not grow it)."""
        return self.data[name]

    def last(self, name: str):
        return self.data[name][-1]

    def set_last(self, name: str, value) -> None:
        self.data[name][-1] = value

    def extend(self, columns: dict[str, list]) -> None:
        """Append rows given as equally long columns, every column named."""
        for name, column in self.data.items():
            column.extend(columns[name])

    def rows(self) -> list[dict]:
        """The rows as dicts, made on each call: for readers, not for a training loop."""
        values = zip(*self.data.values(), strict=True)
        return [dict(zip(ROW_COLUMNS, row, strict=True)) for row in values]


@dataclass
class TrainOutcome:
    """What the loop observed. Filled as it goes, so a crash mid-run keeps what was flushed."""

    status: str = "ok"  # ok / diverged / failed (time limit)
    error: str | None = None
    stopped_early: bool = False
    steps: StepColumns = field(default_factory=StepColumns)  # one per flushed optimizer step
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
    def rows(self) -> list[dict]:
        """The step rows as dicts (``StepColumns.rows``: made on each call)."""
        return self.steps.rows()

    @property
    def optimizer_steps(self) -> int:
        return len(self.steps)

    @property
    def micro_batches(self) -> int:
        return sum(self.steps["micro_batches"])

    @property
    def samples_seen(self) -> int:
        return self.steps.last("samples_seen") if self.steps else 0

    @property
    def final_loss(self) -> float | None:
        return self.steps.last("loss") if self.steps else None


class StepRecorder:
    """Keeps each step's device tensors; ``flush`` turns them into ``outcome.steps``."""

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

    def step_columns(self, seconds: list[float]) -> dict[str, list]:
        """The columns of the next ``len(seconds)`` step rows that follow from the plan
        and the clock: the same for every member of a stack, so a stack makes them once."""
        steps = self.outcome.steps
        step, elapsed = (steps.last("step"), steps.last("time_s")) if steps else (0, 0.0)
        per_epoch, windows = self.windows.steps_per_epoch, self.windows.windows
        columns: dict[str, list] = {name: [] for name in PLAN_COLUMNS}
        for dt in seconds:
            step += 1
            elapsed += dt
            epoch, index = divmod(step - 1, per_epoch)
            columns["epoch"].append(epoch + 1)
            columns["step"].append(step)
            columns["step_in_epoch"].append(index + 1)
            columns["micro_batches"].append(windows[index].micro_batches)
            columns["samples"].append(windows[index].samples)
            columns["samples_seen"].append(self.windows.samples_seen(step))
            columns["time_s"].append(elapsed)
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
        columns: dict[str, list] | None = None,
        lrs: list[float] | None = None,
    ) -> bool:
        """Rows for the next steps from their host values: each window's loss sum (the
        mean is per unit: the window's samples, or ``tokens``), step seconds, sampled
        gradient norms and noise scales by step, GradScaler's skips; ``columns`` and
        ``lrs`` where the caller has them already (a stack: ``step_columns``, the
        schedule's lrs). Rows end at the first non-finite loss, its own row kept:
        False, the run diverged."""
        outcome = self.outcome
        columns = columns or self.step_columns(seconds)
        steps = columns["step"]
        units = tokens if tokens is not None else columns["samples"]
        # A window of no units (all padding) has no mean: nan, as on the device. The
        # division is float64 either way, so Python's is the same number as the device's.
        losses = [s / n if n else math.nan for s, n in zip(loss_sums, units, strict=True)]
        bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
        keep = len(losses) if bad is None else bad + 1
        if lrs is None:
            epochs = columns["epoch"]
            lrs = [
                self.schedule.lr_at(epochs[i] - 1 if self.per_epoch_schedule else steps[i] - 1)
                for i in range(keep)
            ]
        nothing = [None] * keep
        outcome.steps.extend({
            **{name: column[:keep] for name, column in columns.items()},
            "tokens": nothing if tokens is None else tokens[:keep],
            "loss": losses[:keep],
            "lr": lrs[:keep],
            "grad_norm": [norms.get(s) for s in steps[:keep]] if norms else nothing,
            "val_loss": nothing,
            "b_simple": [noise.get(s) for s in steps[:keep]] if noise else nothing,
        })  # fmt: skip
        outcome.step_seconds.extend(seconds[:keep])
        if skipped is not None:
            outcome.skipped_steps += sum(skipped[:keep])
        if bad is not None:
            outcome.status = "diverged"
            outcome.error = f"non-finite loss ({losses[bad]}) at step {steps[bad]}"
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
