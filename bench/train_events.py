"""When the loop looks up from training, and what it does then: evaluation, early stopping.

Between events a step costs one integer comparison of bookkeeping; at an event the loop
flushes, evaluates if due, opens the measured window after the timing warm-up, and checks
the last step and the time limit.
"""

from __future__ import annotations

import io
import math
import time

import torch
from torch import nn

from bench.config import TrialConfig
from bench.plan import Plan
from bench.train_optim import autocast_context
from bench.train_record import TrainOutcome
from bench.workloads.base import Batch, Workload


class EventSchedule:
    """The steps at which the loop must stop and look: a flush, the end of the timing
    warm-up, an evaluation, the last step."""

    def __init__(self, config: TrialConfig, plan: Plan) -> None:
        self.total_steps, self.steps_per_epoch = plan.total_steps, plan.steps_per_epoch
        self.flush_every, self.eval_every = config.flush_every, config.eval_every
        self.warmup_steps = min(config.timing_warmup_steps, max(plan.total_steps - 1, 0))
        self.time_limit_s = config.time_limit_s
        self.deadline = time.monotonic() + config.time_limit_s if config.time_limit_s else None

    def next(self, step: int) -> int:
        """The first event after ``step``."""
        candidates = [self.total_steps, (step // self.flush_every + 1) * self.flush_every]
        if self.warmup_steps > step:
            candidates.append(self.warmup_steps)
        if self.eval_every is None:  # evaluate at each epoch's end
            candidates.append((step // self.steps_per_epoch + 1) * self.steps_per_epoch)
        elif self.eval_every:
            candidates.append((step // self.eval_every + 1) * self.eval_every)
        return min(candidates)

    def eval_due(self, step: int) -> bool:
        if self.eval_every is None:
            return step % self.steps_per_epoch == 0
        return bool(self.eval_every) and step % self.eval_every == 0

    def out_of_time(self, step: int) -> str | None:
        """The error for a trial past its time limit (checked at events only), else None."""
        if self.deadline is None or time.monotonic() <= self.deadline:
            return None
        return f"time limit of {self.time_limit_s} s reached after {step} steps"


@torch.no_grad()
def evaluate(
    model: nn.Module, workload: Workload, val: Batch, chunk: int, device, precision
) -> float:
    """Mean validation loss per unit over the whole validation split (one host sync)."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    units = torch.zeros((), dtype=torch.float64, device=device)
    n = val[0].shape[0]
    with autocast_context(device, precision):
        for start in range(0, n, chunk):
            batch = tuple(t[start : start + chunk] for t in val)
            total += workload.loss_sum(model, batch).double()
            units += workload.units(batch)
    model.train()
    return float(total / units)


class EarlyStopping:
    """Stops after exactly ``patience`` evaluations without an improvement of ``min_delta``.

    (The seed tutorial's ``counter > patience`` waits one evaluation too many.)

    Two evaluations matter for ``restore_best``: the *lowest* validation loss, and the
    *reference*, which moves only on an improvement of more than min_delta (Keras' rule,
    what patience counts from). ``restore = "best"`` reloads the first, ``"last_improvement"``
    the second; with min_delta 0 they are the same evaluation. Only the chosen one's
    weights are kept (``torch.save`` / ``torch.load(weights_only=True)``).
    """

    def __init__(self, config: TrialConfig) -> None:
        self.config = config
        self.bad_evals = 0
        self.reference: float | None = None
        self.kept_state: bytes | None = None
        self.kept_step: int | None = None
        self.kept_val_loss: float | None = None

    def update(self, val_loss: float, model: nn.Module, step: int, outcome: TrainOutcome) -> bool:
        """Record an evaluation; True when training must stop."""
        if not math.isfinite(val_loss):
            outcome.status, outcome.error = "diverged", f"non-finite validation loss at step {step}"
            return True
        lowest = outcome.best_val_loss is None or val_loss < outcome.best_val_loss
        if lowest:
            outcome.best_val_loss = val_loss
        improved = self.reference is None or val_loss < self.reference - self.config.min_delta
        if improved:
            self.reference, self.bad_evals = val_loss, 0
        if self._keep_this_one(lowest, improved):
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            self.kept_state, self.kept_step, self.kept_val_loss = buffer.getvalue(), step, val_loss
        if improved:
            return False
        self.bad_evals += 1
        if self.config.patience is not None and self.bad_evals >= self.config.patience:
            outcome.stopped_early = True
            outcome.notes.append(
                f"early stop at step {step}: {self.bad_evals} evaluations without improvement"
            )
            return True
        return False

    def _keep_this_one(self, lowest: bool, improved: bool) -> bool:
        if not self.config.restore_best:
            return False
        return lowest if self.config.restore == "best" else improved

    def restore_best(self, model: nn.Module, outcome: TrainOutcome) -> None:
        """Load the weights kept by ``restore_best`` (a no-op when none were kept) and
        record their validation loss as ``restored_val_loss``."""
        if self.kept_state is None:
            return
        model.load_state_dict(torch.load(io.BytesIO(self.kept_state), weights_only=True))
        outcome.restored_val_loss = self.kept_val_loss
        outcome.notes.append(
            f"restored the {self.config.restore.replace('_', ' ')} weights "
            f"(step {self.kept_step}, val loss {self.kept_val_loss:.6g})"
        )
