"""The gradient noise scale B_simple, measured inside accumulation windows.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", appendix A: the
mean gradient G_B of B samples has E|G_B|² = |G|² + tr(Σ)/B, with G the true gradient
and Σ the per-sample gradient covariance. Two batch sizes b < n give unbiased estimates

    |G|²  = (n·|G_n|² − b·|G_b|²) / (n − b),   tr(Σ) = (|G_b|² − |G_n|²) / (1/b − 1/n),

and B_simple = tr(Σ) / |G|², averaged over steps as the ratio of the averages of its
numerator and denominator (the ratio of two noisy estimates is biased; the ratio of
their means is consistent).

An accumulation window has both sizes for free: each micro-batch's gradient (size b)
and the window's (size n = b·k). Micro-batches of unequal size u_i (the epoch's last)
are exact with b replaced by the harmonic mean of the u_i: E[mean_i |G_i|²] =
|G|² + tr(Σ)·mean_i(1/u_i). With one micro-batch per window (k = 1, or a short window
of one) the micro-batch runs as two halves, each backward with the window's weight, so
the window's gradient is the same sum.

Each micro-batch's gradient is what its backward adds to ``.grad``: the difference of
``.grad`` after and before it (a copy of the gradients is held across each backward of a
sampled window, none otherwise). Hooks on the parameters would see the increment
without a copy, but a removed tensor hook leaves each later backward ~2.6 us slower
(seed-mlp: 2 % of every step, measured), so the window reads ``.grad`` instead. With
loss weight w_i (``bench.train_windows``: 1/n for ``normalize="sample"``, 1/(U_i·k) for
``"micro"``, U_i the micro-batch's units) the increment is w_i·u_i·G_i, and the window's
sample-mean gradient G_n = Σ_i increment_i / (w_i·n): ``.grad`` itself under
``"sample"``, a weighted sum kept here under ``"micro"``. Under fp16 every increment
carries GradScaler's scale, divided out at the flush.

Sampled every ``noise_scale_every`` optimizer steps. Everything stays on the device;
the flush reads the per-step value (an EMA ratio) and the end of the run the trial's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from bench.workloads.base import Batch

# Per-step column: EMAs of numerator and denominator over sampled steps (McCandlish et
# al. smooth both the same way); 0.9 averages about the last ten samples.
EMA_DECAY = 0.9

# Layers whose output for a sample depends on the rest of its batch (batch statistics)
# or on the order of random draws: splitting a micro-batch in halves would change what
# they compute, so one-micro-batch windows are not measured for models that have them.
DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def halves_change_the_model(model: nn.Module) -> bool:
    """True when running a micro-batch as two halves would change the model's training:
    a layer with running statistics in training mode (BatchNorm and the like) or dropout."""
    for m in model.modules():
        if isinstance(m, DROPOUT_TYPES) and m.training and m.p > 0:
            return True
        if m.training and getattr(m, "running_mean", None) is not None:
            return True
    return False


class NoiseScale:
    """Measures B_simple on sampled windows; the loop calls ``window`` instead of its own
    micro-batch loop at the steps ``next_due`` names.

    On the device a sampled window adds, per micro-batch, a copy of the gradients, their
    difference and its norm, then the window gradient's norm and one stack: every other
    operation (squares, the factors 1/(w_i·u_i), the estimates, the averages) is host
    arithmetic on the few numbers the flush reads back (``Pending``). Each factor
    follows from the loop's weighting rule (n/u_i under "sample", U_i·k/u_i under
    "micro") without reading w_i.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        *,
        every: int,
        sample_normalised: bool,
        accumulation_steps: int,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        self.params, self.every, self.scaler = params, every, scaler
        self.sample_normalised, self.k = sample_normalised, accumulation_steps
        self.can_split = not halves_change_the_model(model)
        device = params[0].device if params else torch.device("cpu")
        # float64 read-back: squares of norms differ by orders of magnitude and each
        # estimate is a difference of two of them (MPS has no float64).
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.one = torch.ones((), device=device)
        self.skipped_single = 0  # one-micro-batch windows left out (halves would change them)
        # Host averages of (tr(Σ), |G|²): EMAs for the per-step column, sums for the trial.
        self.ema = [0.0, 0.0]
        self.sums = [0.0, 0.0]
        self.measured = 0  # windows whose estimates were finite

    def next_due(self, step: int) -> int:
        """The first sampled step after ``step`` (never: -1, a step no run has)."""
        if not self.every:
            return -1
        return (step // self.every + 1) * self.every

    def window(
        self,
        micro_step: Callable[[Batch, torch.Tensor], torch.Tensor],
        batches: Iterator[Batch],
        weights: list[torch.Tensor],
        units_of: Callable[[Batch], int | torch.Tensor],
    ) -> tuple[torch.Tensor, Pending | None]:
        """Run one window's micro-batches through ``micro_step`` (forward + weighted
        backward, returning the detached summed loss) and measure it. Returns the
        window's summed loss and what the flush reads (None: not measured)."""
        pairs = [(next(batches), w) for w in weights]
        if len(pairs) == 1:
            (batch, w), n = pairs[0], int(pairs[0][0][0].shape[0])
            if not self.can_split or n < 2:
                self.skipped_single += 1
                return micro_step(batch, w), None
            half = (n + 1) // 2
            pairs = [(tuple(t[:half] for t in batch), w), (tuple(t[half:] for t in batch), w)]
        units = [units_of(b) for b, _ in pairs]
        total = sum(units)
        split = len(weights) == 1
        norms, window_sum, before, loss = [], None, None, None
        for index, ((batch, w), u) in enumerate(zip(pairs, units, strict=True)):
            part = micro_step(batch, w)
            loss = part if loss is None else loss + part
            after = [p.grad for p in self.params]
            increment = [
                a if b is None else a - b
                for a, b in zip(after, before or [None] * len(after), strict=True)
                if a is not None
            ]
            norms.append(nn.utils.get_total_norm(increment, foreach=True))
            if not self.sample_normalised:  # G_n = Σ_i increment_i / (w_i·n)
                c = (total if split else u) * self.k / total
                scaled = [g * c for g in increment]
                window_sum = (
                    scaled
                    if window_sum is None
                    else [s + g for s, g in zip(window_sum, scaled, strict=True)]
                )
            if index < len(pairs) - 1:  # .grad is added to in place by the next backward
                before = [None if a is None else a.clone() for a in after]
        # .grad is the window's sample-mean gradient under "sample"
        window = window_sum if window_sum is not None else [g for g in after if g is not None]
        counts = [1] * len(norms)
        read = [*norms, nn.utils.get_total_norm(window, foreach=True)]
        if self.scaler is not None:  # the scale these backwards ran with; update() moves it
            read.append(self.scaler.scale(self.one))
        tokens = [u for u in units if isinstance(u, torch.Tensor)]  # token units: counted
        # One stack of the norms (one dtype: the gradients'), cast once: each op counts.
        if len({t.dtype for t in read}) > 1:  # parameters of several dtypes
            read = [t.to(self.dtype) for t in read]
        tensor = torch.stack(read).to(self.dtype)
        if tokens:
            tensor = torch.cat((tensor, torch.stack(tokens).to(self.dtype)))
        host_units = None if tokens else units
        return loss, Pending(self, tensor, counts, host_units, split)

    def fold(self, noise: float, signal: float) -> float | None:
        """Add one window's estimates of tr(Σ) and |G|² to the averages (left out when
        not finite: a skipped fp16 step); B_simple of the EMAs after it."""
        if math.isfinite(noise) and math.isfinite(signal):
            self.ema = [
                a + (1 - EMA_DECAY) * (v - a)
                for a, v in zip(self.ema, (noise, signal), strict=True)
            ]
            self.sums = [a + v for a, v in zip(self.sums, (noise, signal), strict=True)]
            self.measured += 1
        return _ratio(*self.ema)

    def trial_value(self) -> float | None:
        """B_simple over the run: the ratio of the sums of the flushed windows."""
        return _ratio(*self.sums) if self.measured else None


class Pending:
    """A measured window's device numbers until the flush reads them: per-parameter
    increment norms of each micro-batch, the window gradient's norm, GradScaler's scale,
    and token counts where the units are tokens."""

    def __init__(
        self,
        owner: NoiseScale,
        tensor: torch.Tensor,
        counts: list[int],
        units: list[int] | None,
        split: bool,
    ) -> None:
        self.owner, self.tensor, self.counts = owner, tensor, counts
        self.units, self.split = units, split  # units None: read back with the rest

    def finish(self, values: list[float]) -> float | None:
        """Fold the window's estimates, from its read-back ``values``, into the owner's
        averages; returns the per-step B_simple."""
        owner, m = self.owner, len(self.counts)
        units = self.units
        if units is None:
            values, units = values[:-m], values[-m:]
        if owner.scaler is not None:
            values, scale = values[:-1], values[-1]
        else:
            scale = 1.0
        norms, window_norm = values[:-1], values[-1]
        total = sum(units)
        if min(units) <= 0 or scale == 0:  # a micro-batch of padding only: no mean
            return owner.fold(math.nan, math.nan)
        squares, at = [], 0
        for count, u in zip(self.counts, units, strict=True):
            # |G_i| = |increment_i| / (w_i·u_i), w_i = 1/n ("sample"), 1/(U_i·k) ("micro")
            own = total if self.split else u
            factor = total / u if owner.sample_normalised else own * owner.k / u
            squares.append(factor**2 * sum(v * v for v in norms[at : at + count]))
            at += count
        big = sum(squares) / m / scale**2  # mean_i |G_i|², unscaled
        small = window_norm**2 / scale**2  # |G_n|²
        # tr(Σ) = (|G_b|² − |G_n|²) / (mean 1/u_i − 1/n), |G|² = |G_n|² − tr(Σ)/n
        noise = (big - small) / (sum(1 / u for u in units) / m - 1 / total)
        return owner.fold(noise, small - noise / total)


def _ratio(noise: float, signal: float) -> float | None:
    """noise / signal, None where it is no number (0/0: nothing finite measured yet)."""
    if signal == 0:
        return None
    value = noise / signal
    return value if math.isfinite(value) else None
