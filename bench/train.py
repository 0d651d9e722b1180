"""The training loop: executes a Plan exactly, on CPU or CUDA.

What it gets right that the seed tutorial's accumulation loop does not:

- Windows never straddle an epoch: the epoch's trailing short window is either stepped
  on its own (``partial_window="step"``) or not computed at all (``"drop"``), and
  gradients are zeroed after every optimizer step, so nothing leaks into the next epoch.
- ``normalize="sample"`` divides each micro-batch's *summed* loss by the number of units
  (samples, or target tokens) in the whole window, so the accumulated gradient is exactly
  the gradient of the window's mean loss, short windows and uneven micro-batches included.
  ``"micro"`` is the tutorial's ``loss.mean() / k``, kept so its error can be measured.

Hot-loop rules (nanoGPT's comment: ``.item()`` is a sync point): losses, gradient norms
and token counts stay on the device and are read back every ``flush_every`` steps, at
evaluation points and at the end; step times come from ``StepClock`` the same way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.config import TrialConfig
from bench.meters.clock import StepClock
from bench.plan import Plan
from bench.workloads.base import Batch, Workload


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


# -- building blocks -------------------------------------------------------------------


def model_dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision == "fp64" else torch.float32


def autocast_context(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def build_optimizer(config: TrialConfig, params, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW, torch's default implementation (foreach on CUDA) unless ``fused``."""
    extra = {"fused": True} if fused else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            **extra,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **extra)


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

    Our own rather than LambdaLR: the same arithmetic, without ~10 us of Python per
    optimizer step, which is a measurable share of a small model's step on the CPU.
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


def cast_batch(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """Move to the device; floating tensors take the model's dtype (fp64 runs)."""
    return tuple(
        t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, non_blocking=True)
        for t in batch
    )


def _engine_backward() -> Callable[..., None] | None:
    """The autograd engine's entry point, for ``loss.backward(gradient)`` without the
    Python in front of it.

    ``torch.autograd.backward`` runs 60-70k instructions of Python per call before it
    reaches the engine (argument normalisation; ``_make_grads``'s checks, which import a
    module and call ``sym_eq`` on every call when a gradient is passed; the logging-hook
    test): 59-69k instructions (tutorial minus lean loop, scripts/step_instructions.py),
    ~7 us of session 2's ~100 us seed-mlp CPU step. The
    loop always passes one plain 0-d loss and a 0-d weight that it made itself, so those
    checks cannot fail; the engine's own C++ checks (shape, dtype, device) still run, and
    the engine gets the same arguments (tests/test_train.py compares the two bit for bit).
    What the direct call skips besides: autograd's debug-level logging hooks (with that
    logging on, the loop uses ``Tensor.backward``) and the stash of the Python context
    for compiled autograd's device threads, which bench's eager loop does not use.

    ``None`` where this torch has no such entry point, or where a one-time check finds
    that it does not take our arguments or accumulate as ``Tensor.backward`` does: the
    loop then calls ``Tensor.backward``. The check runs a backward, so it runs at the
    first ``train()``, never at import: bench is imported by the forkserver that isolated
    trials fork from, and a backward there would start autograd's CUDA device threads,
    after which a forked child's backward fails (autograd refuses to run after fork).
    """
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
    run_backward = getattr(engine, "run_backward", None)
    if run_backward is None:
        return None
    try:
        with torch.enable_grad():
            x = torch.zeros((), dtype=torch.float64, requires_grad=True)
            seed = torch.full((), 0.5, dtype=torch.float64)
            run_backward((x * 3.0,), (seed,), False, False, (), True, True)
        ok = x.grad is not None and float(x.grad) == 1.5
    except Exception:  # noqa: BLE001 - any failure means: use Tensor.backward
        ok = False
    return run_backward if ok else None


_UNCHECKED = object()
_RUN_BACKWARD: object = _UNCHECKED  # set by the first train(): see _engine_backward


def engine_backward() -> Callable[..., None] | None:
    """The checked engine entry point (or None), found once per process."""
    global _RUN_BACKWARD
    if _RUN_BACKWARD is _UNCHECKED:
        _RUN_BACKWARD = _engine_backward()
    if logging.getLogger("torch.autograd.graph").getEffectiveLevel() <= logging.DEBUG:
        return None  # autograd's logging hooks are attached by torch.autograd.backward
    return _RUN_BACKWARD


def hold_grad_accumulators(params: list[torch.Tensor]) -> list:
    """Each parameter's ``AccumulateGrad`` node, to be kept alive for the whole run.

    A parameter refers to its node weakly: once the last graph that used it is freed,
    the next forward builds a new one per parameter (roughly 20-30k instructions of a
    seed-mlp step: of the 88k this loop and the engine call saved together, the engine
    call accounts for 59k). A plain loop pays less, because its ``loss``
    variable keeps the spent graph alive through the next forward. Holding the nodes
    themselves (as FSDP and DDP do to hook them) gives the reuse without keeping any
    graph: the loop frees each graph right after its backward.
    """
    with torch.enable_grad():
        return [p.expand_as(p).grad_fn.next_functions[0][0] for p in params]


class _EpochOrder(torch.utils.data.Sampler):
    """Feeds a DataLoader the same per-epoch permutation as the fast path."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class _Batches:
    """Micro-batches of one epoch, in plan order, from device tensors or a DataLoader."""

    def __init__(self, config: TrialConfig, workload: Workload, plan: Plan, device, dtype) -> None:
        self.plan, self.device, self.dtype = plan, device, dtype
        self.dataloader = config.data_path == "dataloader"
        if self.dataloader:
            # The tutorial's path: TensorDataset + DataLoader on host memory, copied per batch.
            self.sampler = _EpochOrder()
            self.loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(*workload.train),
                batch_size=plan.micro_batch_size,
                sampler=self.sampler,
                drop_last=plan.drop_last,
                # Its own generator: each epoch's iterator draws a seed, which from the
                # global RNG would shift every dropout mask against the fast path.
                generator=torch.Generator(),
            )
        else:
            # Fast path: the whole training set lives on the device; a batch is an index_select.
            self.train = cast_batch(workload.train, device, dtype)
            self.slices = [plan.micro_batch_slice(m) for m in range(plan.micro_batches_per_epoch)]

    def epoch(self, order: torch.Tensor) -> Iterator[Batch]:
        """The epoch's micro-batches in ``order``. Device copies of the order happen here,
        eagerly, at the epoch boundary; the iterator itself only indexes."""
        if self.dataloader:
            self.sampler.order = order.tolist()
            return (cast_batch(tuple(batch), self.device, self.dtype) for batch in self.loader)
        if self.device.type == "cuda":  # pinned + non_blocking: an async copy
            order = order.pin_memory().to(self.device, non_blocking=True)
        else:
            order = order.to(self.device)
        return self._index(order)

    def _index(self, order: torch.Tensor) -> Iterator[Batch]:
        if len(self.train) == 2:  # (inputs, targets): no per-batch comprehension frame
            a, b = self.train
            for start, stop in self.slices:
                index = order[start:stop]
                yield a.index_select(0, index), b.index_select(0, index)
            return
        for start, stop in self.slices:
            index = order[start:stop]
            yield tuple([t.index_select(0, index) for t in self.train])


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


class _EarlyStopping:
    """Stops after exactly ``patience`` evaluations without an improvement of ``min_delta``.

    (The seed tutorial's ``counter > patience`` waits one evaluation too many.)
    """

    def __init__(self, config: TrialConfig) -> None:
        self.config = config
        self.bad_evals = 0
        self.reference: float | None = None
        self.best_state: bytes | None = None
        self.best_step: int | None = None

    def update(self, val_loss: float, model: nn.Module, step: int, outcome: TrainOutcome) -> bool:
        """Record an evaluation; True when training must stop."""
        if not math.isfinite(val_loss):
            outcome.status, outcome.error = "diverged", f"non-finite validation loss at step {step}"
            return True
        # The reported best is the lowest loss seen; the early-stopping reference moves
        # only on an improvement of more than min_delta (Keras' rule), so with
        # min_delta > 0 the two can differ, and the restored weights are the reference's.
        if outcome.best_val_loss is None or val_loss < outcome.best_val_loss:
            outcome.best_val_loss = val_loss
        if self.reference is None or val_loss < self.reference - self.config.min_delta:
            self.reference, self.bad_evals, self.best_step = val_loss, 0, step
            if self.config.restore_best:  # torch.save / torch.load(weights_only=True)
                buffer = io.BytesIO()
                torch.save(model.state_dict(), buffer)
                self.best_state = buffer.getvalue()
            return False
        self.bad_evals += 1
        if self.config.patience is not None and self.bad_evals >= self.config.patience:
            outcome.stopped_early = True
            outcome.notes.append(
                f"early stop at step {step}: {self.bad_evals} evaluations without improvement"
            )
            return True
        return False


# -- the loop --------------------------------------------------------------------------


def train(
    config: TrialConfig,
    workload: Workload,
    plan: Plan,
    device: torch.device,
    *,
    model: nn.Module | None = None,
    outcome: TrainOutcome | None = None,
    on_window_start: Callable[[], None] | None = None,
) -> tuple[nn.Module, TrainOutcome]:
    """Train ``workload`` following ``plan``. Returns the model and what was observed.

    ``on_window_start`` is called (device synchronised) when timing warm-up is over and
    the measured window opens; meters hook energy and the like there.
    """
    outcome = outcome if outcome is not None else TrainOutcome()
    dtype = model_dtype(config.precision)
    if model is None:
        torch.manual_seed(config.seed)
        model = workload.make_model()
    with host_sync_point(device):  # set-up copies to the device, before any timing
        model.to(device=device, dtype=dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    accumulators = hold_grad_accumulators(params)
    fused = fused_step_wanted(config, device)
    optimizer = build_optimizer(config, params, fused=fused)
    if fused:
        outcome.notes.append(
            "fp16 on CUDA: fused optimizer step (GradScaler's inf check stays on the device)"
        )
    per_epoch = config.scheduler_interval == "epoch"
    total_intervals = plan.epochs_run if per_epoch else plan.total_steps
    schedule = LRSchedule(optimizer, lr_factor(config, total_intervals))
    step_schedule = config.scheduler != "constant" and not per_epoch
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    autocast = (
        autocast_context(device, config.precision) if config.precision in ("bf16", "fp16") else None
    )
    with host_sync_point(device):
        batches = _Batches(config, workload, plan, device, dtype)
        val = cast_batch(workload.val, device, dtype)
    eval_chunk = plan.micro_batch_size
    order_generator = torch.Generator().manual_seed(config.seed)
    token_unit = workload.unit != "sample"
    sample_normalised = config.normalize == "sample"
    clip = config.grad_clip
    norm_every = config.grad_norm_every
    run_backward = engine_backward()

    k = plan.accumulation_steps
    warmup_steps = min(config.timing_warmup_steps, max(plan.total_steps - 1, 0))
    outcome.timing_warmup_steps = warmup_steps
    if warmup_steps == 0 and on_window_start is not None:
        on_window_start()

    early_stopping = _EarlyStopping(config)
    deadline = time.monotonic() + config.time_limit_s if config.time_limit_s else None

    # Each micro-batch's backward is seeded with its weight w: d(loss_sum * w)/d(theta) is
    # the gradient of loss_sum / units without a division node forward and backward
    # (13 us of seed-mlp's ~100 us CPU step). Where the unit is the sample, every weight
    # is known from the plan, so each window's weights are made once, here; token counts
    # depend on the data and are summed on the device at run time.
    weight_dtype = dtype
    inverses: dict[int, torch.Tensor] = {}

    def inverse(units: int) -> torch.Tensor:
        if units not in inverses:
            # torch.full, not torch.tensor: a host value copied to CUDA is a sync.
            inverses[units] = torch.full((), 1.0 / units, dtype=weight_dtype, device=device)
        return inverses[units]

    windows = []  # per window of an epoch, the same every epoch: (micro-batches, samples, weights)
    for s in range(1, plan.steps_per_epoch + 1):
        sizes = [stop - start for start, stop in map(plan.micro_batch_slice, plan.window(s))]
        if token_unit:
            weights = None
        elif sample_normalised:
            weights = [inverse(sum(sizes))] * len(sizes)
        else:  # the tutorial: each micro-batch's mean, divided by k
            weights = [inverse(size * k) for size in sizes]
        windows.append((len(sizes), sum(sizes), weights))
    samples_before = [0]  # samples of the epoch's windows before window s (index s - 1)
    for _, samples, _ in windows:
        samples_before.append(samples_before[-1] + samples)
    samples_per_epoch = samples_before[-1]

    flush_every, eval_every = config.flush_every, config.eval_every
    total_steps, steps_per_epoch = plan.total_steps, plan.steps_per_epoch

    def next_event(step: int) -> int:
        """The next step after ``step`` at which the loop must look up from training:
        a flush, the end of the timing warm-up, an evaluation, or the last step. Between
        events a step costs one integer comparison of bookkeeping."""
        candidates = [total_steps, (step // flush_every + 1) * flush_every]
        if warmup_steps > step:
            candidates.append(warmup_steps)
        if eval_every is None:  # evaluate at each epoch's end
            candidates.append((step // steps_per_epoch + 1) * steps_per_epoch)
        elif eval_every:
            candidates.append((step // eval_every + 1) * eval_every)
        return min(candidates)

    # Until the next flush, per step, only what the device computed: the window's loss
    # sum (and token count), the sampled gradient norms, and the clock's marks. Every
    # other column of a step row follows from the plan and is made at flush time.
    pending_losses: list[torch.Tensor] = []
    pending_units: list[torch.Tensor] = []  # token workloads only
    pending_norms: dict[int, list[torch.Tensor]] = {}  # step -> norms (see flush)
    clock = StepClock(device)
    clock.start()

    def flush() -> bool:
        """Read back pending losses and times; False when training must stop (diverged)."""
        if not pending_losses:
            return True
        first = outcome.rows[-1]["step"] + 1 if outcome.rows else 1
        steps = range(first, first + len(pending_losses))
        seconds = clock.flush()
        # One device read for the losses (and token counts); the division by each window's
        # units is float64 either way, so Python's is the same number as the device's.
        loss_sums = torch.stack(pending_losses).double().tolist()
        if token_unit:
            tokens = [int(t) for t in torch.stack(pending_units).tolist()]
            units = tokens
        else:
            units = [windows[(step - 1) % steps_per_epoch][1] for step in steps]
            tokens = [None] * len(steps)
        losses = [  # a window of no units (all padding) has no mean: nan, as on the device
            loss_sum / n if n else math.nan for loss_sum, n in zip(loss_sums, units, strict=True)
        ]
        norms = {}
        if pending_norms:
            # Each entry is [global norm] (clipping computed it) or the per-tensor norms,
            # the same length for every step of a trial; the norm of the norms is the
            # global norm either way. One stack, one reduction, one read for all steps.
            per_step = torch.stack([n for entry in pending_norms.values() for n in entry])
            per_step = per_step.reshape(len(pending_norms), -1)
            global_norms = torch.linalg.vector_norm(per_step, dim=1).tolist()
            norms = dict(zip(pending_norms, global_norms, strict=True))
        elapsed = outcome.rows[-1]["time_s"] if outcome.rows else 0.0
        for step, loss, n_tokens, dt in zip(steps, losses, tokens, seconds, strict=True):
            elapsed += dt
            epoch, index = divmod(step - 1, steps_per_epoch)
            n_micro, samples, _ = windows[index]
            intervals = epoch if per_epoch else step - 1  # scheduler steps before this one
            outcome.rows.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "step_in_epoch": index + 1,
                    "micro_batches": n_micro,
                    "samples": samples,
                    "samples_seen": epoch * samples_per_epoch + samples_before[index + 1],
                    "tokens": n_tokens,
                    "loss": loss,
                    "lr": schedule.lr_at(intervals),
                    "grad_norm": norms.get(step),
                    "time_s": elapsed,
                    "val_loss": None,
                }
            )
            outcome.step_seconds.append(dt)
            if not math.isfinite(loss):
                outcome.status = "diverged"
                outcome.error = f"non-finite loss ({loss}) at step {step}"
                break
        pending_losses.clear()
        pending_units.clear()
        pending_norms.clear()
        return outcome.status == "ok"

    # Per step, the loop touches only locals: each attribute lookup saved is ~20 ns of a
    # step that is ~100 us on the CPU for the smallest workloads.
    step_windows = [(n_micro, weights) for n_micro, _, weights in windows]
    loss_of, plain_tensor = workload.loss_sum, torch.Tensor
    optimizer_step, zero_grad = optimizer.step, optimizer.zero_grad
    mark, keep_loss = clock.mark, pending_losses.append
    global_step = 0
    event = next_event(0)
    stop = False
    try:
        for epoch in range(1, plan.epochs_run + 1):
            outcome.epochs_run = epoch
            order = torch.randperm(plan.samples, generator=order_generator)
            with host_sync_point(device):  # an epoch boundary: the order goes to the device
                micro = batches.epoch(order)
            for step_in_epoch, (n_micro, weights) in enumerate(step_windows, start=1):
                global_step += 1
                if weights is None:  # token units: the window's total before the first backward
                    window = [next(micro) for _ in range(n_micro)]
                    units = [workload.units(b) for b in window]
                    window_units = sum(units)
                    weights = [
                        (window_units if sample_normalised else u * k).to(weight_dtype).reciprocal()
                        for u in units
                    ]
                    pending_units.append(window_units)
                    batches_of_window = iter(window)
                else:
                    batches_of_window = micro
                window_loss = None
                for weight in weights:
                    batch = next(batches_of_window)
                    if autocast is None:
                        loss_sum = loss_of(model, batch)
                    else:
                        with autocast:
                            loss_sum = loss_of(model, batch)
                    seed = loss_sum if scaler is None else scaler.scale(loss_sum)
                    if run_backward is not None and type(seed) is plain_tensor:
                        # seed.backward(weight) minus its Python (see _engine_backward);
                        # tensor subclasses keep their __torch_function__ via Tensor.backward.
                        run_backward((seed,), (weight,), False, False, (), True, True)
                    else:
                        seed.backward(weight)
                    # Nothing may keep the spent graph: ``seed`` would until the next forward.
                    del seed
                    loss_sum = loss_sum.detach()
                    window_loss = loss_sum if window_loss is None else window_loss + loss_sum
                if scaler is not None:
                    scaler.unscale_(optimizer)  # once per window, before the norm and the step
                if clip is not None:
                    # What get_total_norm computes, minus its dispatch layers (13 vs 27 us on the
                    # CPU for seed-mlp's four tensors).
                    grads = [p.grad for p in params if p.grad is not None]
                    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                    pending_norms[global_step] = [grad_norm]
                    nn.utils.clip_grads_with_norm_(params, clip, grad_norm, foreach=True)
                elif norm_every and global_step % norm_every == 0:
                    # Only the per-tensor norms here; flush() combines them, off the clock.
                    pending_norms[global_step] = torch._foreach_norm(
                        [p.grad for p in params if p.grad is not None]
                    )
                if scaler is None:
                    optimizer_step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                zero_grad(set_to_none=True)
                if step_schedule:
                    schedule.step()
                mark()
                keep_loss(window_loss)
                if global_step < event:
                    continue

                # An event: flush, and whatever else is due at this step.
                last = global_step == total_steps
                eval_due = (eval_every is None and step_in_epoch == steps_per_epoch) or (
                    bool(eval_every) and global_step % eval_every == 0
                )
                with host_sync_point(device):
                    ok = flush()
                if not ok:
                    stop = True
                    break
                if eval_due:
                    with host_sync_point(device):
                        val_loss = evaluate(
                            model, workload, val, eval_chunk, device, config.precision
                        )
                        outcome.rows[-1]["val_loss"] = val_loss
                        stop = early_stopping.update(val_loss, model, global_step, outcome)
                if not stop and global_step == warmup_steps and on_window_start is not None:
                    # After this step's evaluation: the window (energy, ...) holds timed steps only.
                    with host_sync_point(device):
                        clock.synchronize()
                        on_window_start()
                if stop:
                    break
                if last:
                    stop = True
                    break
                if deadline is not None and time.monotonic() > deadline:  # checked at events
                    outcome.status = "failed"
                    outcome.error = (
                        f"time limit of {config.time_limit_s} s reached after {global_step} steps"
                    )
                    stop = True
                    break
                event = next_event(global_step)
                # The flush and any evaluation were the harness's time, not training's: the
                # next step is timed from here (its wall-clock share shows in window_wall_s).
                clock.resume()
            if stop:
                break
            if per_epoch:
                schedule.step()
        with host_sync_point(device):
            flush()
    except BaseException:
        # An OOM or error mid-run: the steps completed since the last flush are real and
        # are kept (their count, samples and losses); the read-back may fail too after a
        # CUDA OOM, and then the error being raised is what matters.
        del pending_units[len(pending_losses) :]  # the failed window's count, if taken
        with contextlib.suppress(Exception), host_sync_point(device):
            flush()
        raise
    finally:
        if token_unit:
            outcome.tokens_seen = sum(row["tokens"] for row in outcome.rows)
    del accumulators  # held to here (see hold_grad_accumulators)
    if early_stopping.best_state is not None:
        model.load_state_dict(torch.load(io.BytesIO(early_stopping.best_state), weights_only=True))
        outcome.notes.append(
            f"restored the best weights (step {early_stopping.best_step}, "
            f"val loss {early_stopping.reference:.6g})"
        )
    return model, outcome
