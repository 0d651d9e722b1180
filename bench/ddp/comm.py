"""The gradient all-reduce, counted: a DDP communication hook that does what DDP's
default hook does (divide by the world size, all-reduce, hand the bucket back) and
counts each call, its bytes and, on gloo, its time.

Counted, not estimated: the hook runs once per gradient bucket DDP actually reduces, so
``no_sync`` windows, bucket rebuilding and unused parameters all show in the numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class CommCounter:
    """What the hook saw on this rank; ranks make the same calls with the same sizes."""

    world_size: int
    timed: bool  # gloo: a future completes when its work does; NCCL's when it is queued
    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    buckets: int = 0  # distinct bucket indices seen

    def fields(self) -> dict:
        return {
            "allreduce_calls": self.calls,
            "allreduce_bytes": self.bytes,
            "allreduce_time_s": self.seconds if self.timed else None,
        }


def counting_allreduce_hook(state: CommCounter, bucket):  # noqa: ANN001
    """torch's ``default_hooks.allreduce_hook``, counted (register with
    ``DistributedDataParallel.register_comm_hook(counter, counting_allreduce_hook)``).

    ``bucket`` is a ``dist.GradBucket`` and the return a ``Future[Tensor]``; they are not
    annotated because DDP checks a hook's annotations against the classes, and this
    module's annotations are strings."""
    buffer = bucket.buffer()
    state.calls += 1
    state.bytes += buffer.numel() * buffer.element_size()
    state.buckets = max(state.buckets, bucket.index() + 1)
    # Divide first, as the default hook does: the sum of N averaged shares cannot
    # overflow where a sum of N full gradients might (fp16).
    buffer.div_(state.world_size)
    started = time.perf_counter()
    future = dist.all_reduce(buffer, async_op=True).get_future()

    def done(fut: torch.futures.Future) -> torch.Tensor:
        # Runs when the all-reduce has completed (gloo: on its worker thread): the time
        # it was in flight, overlapped with the rest of the backward or not.
        state.seconds += time.perf_counter() - started
        return fut.value()[0]

    return future.then(done)
