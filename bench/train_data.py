"""Micro-batches of one epoch, in plan order, from device tensors or the tutorial's DataLoader."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bench.config import TrialConfig
from bench.plan import Plan
from bench.workloads.base import Batch, Workload


def cast_batch(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """Move to the device; floating tensors take the model's dtype (fp64 runs)."""
    return tuple(
        t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, non_blocking=True)
        for t in batch
    )


class _EpochOrder(torch.utils.data.Sampler):
    """Feeds a DataLoader the same per-epoch permutation as the fast path."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class Batches:
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
