"""What a workload is: training and validation tensors, a model factory and a loss.

The training loop only needs three things from a workload:

- ``loss_sum(model, batch)``: the loss *summed* over the batch's units (samples, or
  target tokens for language models), as a 0-d tensor;
- ``units(batch)``: how many units that sum is over (an int, or a 0-d device tensor
  when it depends on the data, e.g. padding); the loop divides by the window's total,
  so the accumulated gradient is exactly that of the window's mean loss;
- tensors indexed on dim 0, so batches are formed by indexing (no collate step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.workloads.declared import physical_memory_bytes
from bench.workloads.norms import feature_norm

Batch = tuple[torch.Tensor, ...]


@dataclass
class Workload:
    name: str
    train: Batch
    val: Batch
    make_model: Callable[[], nn.Module]
    unit: str = "sample"  # what the loss is normalised over: "sample" or "token"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.train[0].shape[0])

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def units(self, batch: Batch) -> int | torch.Tensor:
        return int(batch[0].shape[0])

    def flops_per_token_formula(self, model: nn.Module) -> float | None:
        """Analytic training FLOPs per unit, for cross-checking the counter (None: none known)."""
        return None


# Bytes of each tensor that data_sha256 reads: all of a benchmark-sized dataset, and a
# bounded cost (~50 ms) for a large one, whose first 64 MiB then stand for it.
FINGERPRINT_LIMIT_BYTES = 64 * 2**20


def data_sha256(workload: Workload) -> str:
    """16 hex digits identifying the training and validation data (dtype, shape and
    contents of every tensor). trial_key hashes the configuration, not the data a
    workload builds from it: when a workload's data generation changes, results before
    and after share keys, and this is what tells them apart (bench compare warns)."""
    h = hashlib.sha256()
    for part, batch in (("train", workload.train), ("val", workload.val)):
        for t in batch:
            t = t.detach()
            h.update(f"{part}:{t.dtype}:{tuple(t.shape)}:".encode())
            flat = t.reshape(-1)[: FINGERPRINT_LIMIT_BYTES // max(1, t.element_size())]
            h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class ClassificationWorkload(Workload):
    """(x, y) pairs, cross-entropy over classes; the unit is the sample."""

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")


def mlp(sizes: list[int], *, dropout: float = 0.0, norm: str = "none") -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and a normalisation
    layer before each ReLU and dropout after it, if asked: ``bench.workloads.norms``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            normalise = feature_norm(norm, b)
            if normalise is not None:
                layers.append(normalise)
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


ROW_CHUNK = 4096  # rows are drawn in fixed chunks, so a prefix never depends on the count


def stream_generator(data_seed: int, stream: str) -> torch.Generator:
    """A generator of its own for one stream of a workload's data ("train", "val",
    "teacher"): drawing more of one stream never moves another."""
    digest = hashlib.sha256(f"{data_seed}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def check_fits(what: str, nbytes: int) -> None:
    """Raise before anything is allocated when ``nbytes`` exceed this machine's RAM: such
    data cannot be built (workloads build it on the CPU), and drawing it chunk by chunk
    would run for minutes before the allocator or the OOM killer said so. The error is
    torch's out-of-memory type (a RuntimeError), so every caller treats it as the
    allocator's own: bad input when building a spec or ``bench run``, an oom in a trial."""
    total = physical_memory_bytes()
    if total is not None and nbytes > total:
        from bench.config import format_bytes

        raise torch.OutOfMemoryError(
            f"{what} take {format_bytes(nbytes)}, more than the "
            f"{format_bytes(total)} of memory this machine has"
        )


def draw_rows(
    count: int, data_seed: int, stream: str, draw: Callable[[torch.Generator, int], Batch]
) -> Batch:
    """The first ``count`` rows of a stream, drawn ``ROW_CHUNK`` at a time by
    ``draw(generator, rows)``: N samples are the first N of any larger N, so a training
    set only grows with N (the same task, more data), and the validation set, a stream of
    its own, does not change with it."""
    g = stream_generator(data_seed, stream)
    first = draw(g, ROW_CHUNK)
    row_bytes = sum(t[0].numel() * t.element_size() for t in first)
    check_fits(f"{count} {stream} rows", count * row_bytes)
    # The whole result is allocated before the rest is drawn: a count too large for the
    # machine fails here, at once, instead of growing chunk by chunk into the OOM killer.
    out = tuple(torch.empty((count, *t.shape[1:]), dtype=t.dtype) for t in first)
    for start in range(0, count, ROW_CHUNK):
        parts = first if start == 0 else draw(g, ROW_CHUNK)
        rows = min(ROW_CHUNK, count - start)
        for target, part in zip(out, parts, strict=True):
            target[start : start + rows] = part[:rows]
    return out
