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

Each micro-batch's gradient is what its backward adds to ``.grad``: a hook on each
parameter sees that increment before it is accumulated (``Tensor.register_hook``), so
no copy of the gradients is kept. With loss weight w_i (``bench.train_windows``: 1/n
for ``normalize="sample"``, 1/(u_i·k) for ``"micro"``) the increment is w_i·u_i·G_i, and
the window's sample-mean gradient G_n = Σ_i increment_i / (w_i·n): ``.grad`` itself
under ``"sample"``, a weighted sum the hooks keep under ``"micro"``. Under fp16 every
increment carries GradScaler's scale, divided out here.

Sampled every ``noise_scale_every`` optimizer steps. Everything stays on the device;
the flush reads the per-step value (an EMA ratio) and the end of the run the trial's.
"""

from __future__ import annotations

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
    micro-batch loop at the steps ``due`` names."""

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        *,
        every: int,
        sample_normalised: bool,
        accumulation_steps: int,
        device: torch.device,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        self.params, self.every, self.scaler = params, every, scaler
        self.sample_normalised, self.k = sample_normalised, accumulation_steps
        self.can_split = not halves_change_the_model(model)
        # float64 sums of squares: a large model's |G|² and tr(Σ) differ by orders of
        # magnitude, and their difference is the estimate (MPS has no float64).
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        zero = torch.zeros((), dtype=self.dtype, device=device)
        self.one = torch.ones((), device=device)
        # EMAs (per-step column) and plain sums (the trial's value) of tr(Σ) and |G|².
        self.ema_noise, self.ema_signal = zero.clone(), zero.clone()
        self.sum_noise, self.sum_signal = zero.clone(), zero.clone()
        self.samples = 0  # windows measured
        self.skipped_single = 0  # one-micro-batch windows left out (halves would change them)
        self._squares: list[torch.Tensor] = []  # |increment|² per parameter, this backward
        self._window_sum: list[torch.Tensor | None] = []  # "micro": Σ_i c_i·increment_i
        self._coefficient: torch.Tensor | None = None

    def next_due(self, step: int) -> int:
        """The first sampled step after ``step`` (never: a step past any run)."""
        if not self.every:
            return -1
        return (step // self.every + 1) * self.every

    def window(
        self,
        micro_step: Callable[[Batch, torch.Tensor], torch.Tensor],
        batches: Iterator[Batch],
        weights: list[torch.Tensor],
        units_of: Callable[[Batch], int | torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one window's micro-batches through ``micro_step`` (forward + weighted
        backward, returning the detached summed loss) and measure it. Returns the
        window's summed loss and the per-step B_simple (None: not measured)."""
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
        handles = [p.register_hook(self._hook(i)) for i, p in enumerate(self.params)]
        self._window_sum = [None] * len(self.params)
        micro_squares, loss = [], None
        try:
            for (batch, w), u in zip(pairs, units, strict=True):
                # G_n = Σ_i increment_i / (w_i·n): under "sample" w_i·n = 1 and .grad is G_n.
                self._coefficient = None if self.sample_normalised else 1.0 / (w * total)
                part = micro_step(batch, w)
                loss = part if loss is None else loss + part
                squares = torch.stack(self._squares).sum() if self._squares else None
                self._squares.clear()
                # |G_i|² = |increment_i|² / (w_i·u_i)²
                micro_squares.append(squares / (w * u) ** 2)
        finally:
            for h in handles:
                h.remove()
        window = self._window_gradient()
        # The scale the window's backwards ran with (update() changes it after the step).
        scale = None if self.scaler is None else self.scaler.scale(self.one)
        value = self._update(micro_squares, window, units, total, scale)
        return loss, value

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            # The increment this backward adds to .grad; .grad is not yet updated.
            self._squares.append(grad.to(self.dtype).square().sum())
            if self._coefficient is not None:
                add = grad * self._coefficient
                acc = self._window_sum[index]
                self._window_sum[index] = add if acc is None else acc + add

        return hook

    def _window_gradient(self) -> list[torch.Tensor]:
        if self.sample_normalised:
            return [p.grad for p in self.params if p.grad is not None]
        return [g for g in self._window_sum if g is not None]

    def _update(
        self,
        micro_squares: list[torch.Tensor],
        window: list[torch.Tensor],
        units: list,
        total,
        scale: torch.Tensor | None,
    ) -> torch.Tensor:
        """Fold one window's estimates into the averages; the per-step EMA ratio."""
        window_square = nn.utils.get_total_norm(window, foreach=True).to(self.dtype) ** 2
        big = torch.stack(micro_squares).mean()  # mean_i |G_i|²
        inverse = sum(1.0 / u for u in units) / len(units)  # mean_i 1/u_i
        if scale is not None:  # increments and .grad carry GradScaler's scale
            inv = 1.0 / scale.to(self.dtype) ** 2
            big, window_square = big * inv, window_square * inv
        noise = (big - window_square) / (inverse - 1.0 / total)
        signal = window_square - noise / total
        ok = torch.isfinite(noise) & torch.isfinite(signal)  # a skipped fp16 step: inf
        d = EMA_DECAY
        self.ema_noise = torch.where(ok, d * self.ema_noise + (1 - d) * noise, self.ema_noise)
        self.ema_signal = torch.where(ok, d * self.ema_signal + (1 - d) * signal, self.ema_signal)
        self.sum_noise = torch.where(ok, self.sum_noise + noise, self.sum_noise)
        self.sum_signal = torch.where(ok, self.sum_signal + signal, self.sum_signal)
        self.samples += 1
        return self.ema_noise / self.ema_signal

    def trial_value(self) -> float | None:
        """B_simple over the whole run (a host read: call at the end)."""
        if not self.samples:
            return None
        value = float(self.sum_noise / self.sum_signal)
        return value if value == value else None  # 0/0: nothing finite was measured
