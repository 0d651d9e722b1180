"""Epoch / micro-batch / window / step arithmetic. Pure Python: imports no torch.

Vocabulary (the seed tutorial's, made exact):

- N samples, micro-batch size b, accumulation steps k, effective batch B = b*k.
- An epoch is M micro-batches: ceil(N/b), or floor(N/b) with ``drop_last`` (the last,
  incomplete micro-batch is then not formed at all, as PyTorch's DataLoader does).
- A *window* is k consecutive micro-batches whose gradients are summed into one optimizer
  step. The last r = M mod k micro-batches of an epoch form a short window:
  ``partial_window="step"`` flushes it with its own optimizer step (steps per epoch =
  ceil(M/k)); ``"drop"`` discards it (steps per epoch = floor(M/k)). Gradients never
  carry across an epoch boundary: that is the leak in the tutorial's accumulation loop.
- Training ends after E epochs or ``max_steps`` optimizer steps, whichever comes first.
  Epochs not given: 1, or with ``max_steps`` alone as many epochs as ``max_steps`` takes
  (:func:`default_epochs`; ``bench plan``, ``bench run``, TrialConfig and a sweep's
  ``[budget]`` all follow it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import EllipsisType

from bench.errors import ConfigError, unknown

MODES = ("sgd", "mbgd", "bgd")
PARTIAL_WINDOWS = ("step", "drop")


@dataclass(frozen=True, kw_only=True)
class Plan:
    samples: int
    micro_batch_size: int
    accumulation_steps: int
    epochs: int | None
    max_steps: int | None
    drop_last: bool
    partial_window: str
    mode: str

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps

    @property
    def micro_batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.samples // self.micro_batch_size
        return -(-self.samples // self.micro_batch_size)  # ceil, exact for any int (no float)

    @property
    def last_micro_batch_size(self) -> int:
        """Size of an epoch's last micro-batch (smaller than b when b does not divide N)."""
        m, b = self.micro_batches_per_epoch, self.micro_batch_size
        return b if self.drop_last else self.samples - (m - 1) * b

    @property
    def short_window_micro_batches(self) -> int:
        """r = M mod k: micro-batches in the epoch's trailing short window (0 if none)."""
        return self.micro_batches_per_epoch % self.accumulation_steps

    @property
    def steps_per_epoch(self) -> int:
        m, k = self.micro_batches_per_epoch, self.accumulation_steps
        return -(-m // k) if self.partial_window == "step" else m // k

    @property
    def total_steps(self) -> int:
        candidates = []
        if self.epochs is not None:
            candidates.append(self.steps_per_epoch * self.epochs)
        if self.max_steps is not None:
            candidates.append(self.max_steps)
        return min(candidates)

    @property
    def epochs_run(self) -> int:
        """Epochs that see at least one optimizer step (the last may be cut by max_steps)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def window(self, step_in_epoch: int) -> range:
        """Micro-batch indices (0-based, within the epoch) of window ``step_in_epoch`` (1-based)."""
        k = self.accumulation_steps
        first = (step_in_epoch - 1) * k
        return range(first, min(first + k, self.micro_batches_per_epoch))

    def micro_batch_slice(self, index: int) -> tuple[int, int]:
        """[start, stop) positions in the epoch's sample order of micro-batch ``index`` (0-based)."""
        b = self.micro_batch_size
        return index * b, min((index + 1) * b, self.samples)

    def window_samples(self, step_in_epoch: int) -> int:
        """Samples that contribute to the optimizer step ``step_in_epoch`` (1-based)."""
        w = self.window(step_in_epoch)
        first, _ = self.micro_batch_slice(w.start)
        _, last = self.micro_batch_slice(w.stop - 1)
        return last - first

    def steps(self) -> Iterator[tuple[int, int, int]]:
        """Yield (epoch, step_in_epoch, global_step), all 1-based, in training order."""
        spe, total = self.steps_per_epoch, self.total_steps
        for global_step in range(1, total + 1):
            epoch, step_in_epoch = divmod(global_step - 1, spe)
            yield epoch + 1, step_in_epoch + 1, global_step

    def global_step(self, epoch: int, batch: int) -> int | None:
        """The optimizer step that micro-batch ``batch`` of ``epoch`` (both 1-based) belongs to.

        None when that micro-batch's gradients are discarded (dropped short window) or the
        run ends (max_steps) before it. Raises ConfigError for positions outside the plan.
        """
        if epoch < 1:
            raise ConfigError(f"at-epoch must be >= 1, got {epoch}")
        if not 1 <= batch <= self.micro_batches_per_epoch:
            raise ConfigError(
                f"at-batch must be in 1..{self.micro_batches_per_epoch} "
                f"(micro-batches per epoch), got {batch}"
            )
        window_index = (batch - 1) // self.accumulation_steps
        if window_index >= self.steps_per_epoch:
            return None
        step = (epoch - 1) * self.steps_per_epoch + window_index + 1
        return step if step <= self.total_steps else None

    def no_step_reason(self, epoch: int, batch: int) -> str | None:
        """Why micro-batch ``batch`` of ``epoch`` reaches no optimizer step, in words that
        name only the budget that ends the run; None when it reaches one."""
        if self.global_step(epoch, batch) is not None:
            return None
        if (batch - 1) // self.accumulation_steps >= self.steps_per_epoch:
            return "its window is the epoch's short window, dropped (partial_window 'drop')"
        total = self.total_steps
        if self.max_steps is not None and total == self.max_steps:
            return f"the run ends at max_steps = {total}, in epoch {self.epochs_run}"
        return f"the run ends after {self.epochs} epoch(s), {total} optimizer steps"

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "mode": self.mode,
            "micro_batch_size": self.micro_batch_size,
            "accumulation_steps": self.accumulation_steps,
            "effective_batch_size": self.effective_batch_size,
            "drop_last": self.drop_last,
            "partial_window": self.partial_window,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "micro_batches_per_epoch": self.micro_batches_per_epoch,
            "last_micro_batch_size": self.last_micro_batch_size,
            "short_window_micro_batches": self.short_window_micro_batches,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "epochs_run": self.epochs_run,
        }


def default_epochs(max_steps: int | None) -> int | None:
    """The epochs of a budget that names none: with ``max_steps``, None (run until
    max_steps, as many epochs as it takes: a cap of one epoch would make ``max_steps``
    mean "at most one epoch"); without, one epoch."""
    return None if max_steps is not None else 1


def _check_int(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def make_plan(
    *,
    samples: int,
    batch_size: int | None = None,
    accumulation_steps: int = 1,
    mode: str = "mbgd",
    epochs: int | None | EllipsisType = ...,
    max_steps: int | None = None,
    drop_last: bool = False,
    partial_window: str = "step",
) -> Plan:
    """Validate and build a Plan. ``mode`` sgd / bgd force b = 1 / b = N. ``epochs``
    left out: :func:`default_epochs`; given as None, ``max_steps`` is required."""
    if epochs is ...:
        epochs = default_epochs(max_steps)
    samples = _check_int("samples", samples, 1)
    if mode not in MODES:
        raise unknown("mode", mode, MODES)
    if partial_window not in PARTIAL_WINDOWS:
        raise unknown("partial_window", partial_window, PARTIAL_WINDOWS)
    if mode == "sgd":
        batch_size = 1
    elif mode == "bgd":
        batch_size = samples
    elif batch_size is None:
        raise ConfigError("batch_size is required with mode 'mbgd'")
    b = _check_int("batch_size", batch_size, 1)
    if b > samples:
        raise ConfigError(
            f"batch_size {b} exceeds samples {samples}; use mode 'bgd' for full-batch training"
        )
    k = _check_int("accumulation_steps", accumulation_steps, 1)
    if epochs is None and max_steps is None:
        raise ConfigError("give epochs or max_steps (or both: whichever ends first)")
    if epochs is not None:
        _check_int("epochs", epochs, 1)
    if max_steps is not None:
        _check_int("max_steps", max_steps, 1)
    plan = Plan(
        samples=samples,
        micro_batch_size=b,
        accumulation_steps=k,
        epochs=epochs,
        max_steps=max_steps,
        drop_last=bool(drop_last),
        partial_window=partial_window,
        mode=mode,
    )
    if b * k > samples:
        # No window can hold b*k samples (b*k > N iff k > floor(N/b), the full
        # micro-batches of an epoch): with "drop" no step would ever happen, with "step"
        # every window is short and effective_batch_size would be a number never trained.
        advice = f"lower accumulation_steps (at most {samples // b} here)"
        if mode != "bgd":
            advice += ", or use mode 'bgd' for full-batch steps"
        raise ConfigError(
            f"effective batch b*k = {b}*{k} = {b * k} exceeds samples {samples}: no window "
            f"can hold it; {advice}"
        )
    return plan
