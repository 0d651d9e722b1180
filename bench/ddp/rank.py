"""One rank of a data-parallel trial: its process group, its DDP model, its share of
every micro-batch, and the hooks :func:`bench.train.train` calls.

A rank is told who it is by the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); :mod:`bench.ddp.launch` sets the same variables
for the ranks it starts, so a trial runs the same way under either.

Equivalence with one process (the tests hold it to 1e-10 in fp64): every rank sees the
same seeded permutation and takes its run of b positions of each global micro-batch
(:class:`bench.ddp.plan.ParallelPlan`); each micro-batch's loss weight is world_size /
(the window's global samples or tokens), and DDP's all-reduce averages over the ranks,
so the gradient summed into each parameter is the 1-process window's.
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.ddp.comm import CommCounter, counting_allreduce_hook
from bench.ddp.plan import ParallelPlan, parallel_plan
from bench.errors import ConfigError

ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# How long a collective waits for a peer: a rank that died or hangs must not hold the
# others for torch's default (30 min on gloo, 10 on NCCL). Longer than any step here.
DEFAULT_TIMEOUT_S = 120.0


def in_rank() -> bool:
    """True in a process torchrun or bench.ddp.launch started as a rank."""
    return all(key in os.environ for key in ENV_KEYS)


def rank_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def rank_device(config_device: str, local_rank: int) -> torch.device:
    """CUDA: one GPU per rank (cuda:LOCAL_RANK); else the CPU."""
    wants_cuda = config_device.startswith("cuda") or (
        config_device == "auto" and torch.cuda.is_available()
    )
    if not wants_cuda:
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"nproc: local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "one GPU per rank"
        )
    return torch.device("cuda", local_rank)


class RankHooks:
    """This rank's process group and the pieces of it the training loop calls."""

    def __init__(self, plan: ParallelPlan, rank: int, device: torch.device, sync: str) -> None:
        self.parallel_plan, self.rank, self.device, self.sync = plan, rank, device, sync
        self.world_size = plan.world_size
        self.counter = CommCounter(plan.world_size, timed=device.type != "cuda")
        self.ddp: DistributedDataParallel | None = None

    @property
    def plan(self):
        """The global plan the loop follows (micro-batch b * world_size)."""
        return self.parallel_plan.plan

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """DDP around the placed model, its all-reduce counted. Its constructor broadcasts
        rank 0's parameters (the same here: every rank builds the model from the seed)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer sync in the forward: every rank builds the same buffers from the seed,
        # and it would add a collective to every forward. torch 2.13 names the setting
        # forward_sync_buffers (broadcast_buffers warns there); older torch, the old name.
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in params
            else {"broadcast_buffers": False}
        )
        self.ddp = DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)
        self.ddp.register_comm_hook(self.counter, counting_allreduce_hook)
        return self.ddp

    def rank_slices(self, slices: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """This rank's [start, stop) of each global micro-batch's."""
        return [self.parallel_plan.rank_slice(self.rank, a, z) for a, z in slices]

    def reduce_units(self, units: torch.Tensor) -> torch.Tensor:
        """A token window's total over all ranks (every rank needs it before its first
        backward). Its own collective, outside the counted gradient all-reduce."""
        units = units.clone()
        dist.all_reduce(units)
        return units

    def loss_fn(self, loss_of: Callable, window_sizes: list[int]) -> Callable:
        """``loss_of`` for the loop. ``sync = "window"``: the forwards of a window's first
        k - 1 micro-batches run under ``no_sync()``: DDP decides at the forward whether
        the coming backward all-reduces (it arms its reducer there), so their gradients
        accumulate locally and the last backward reduces the window's sum once.
        ``"every"``: every backward all-reduces, as a naive DDP loop does."""
        if self.sync == "every":
            return loss_of
        assert self.ddp is not None, "wrap() comes first"
        no_sync = self.ddp.no_sync
        # The loop runs the epoch's windows in order, every epoch: True = skip the sync.
        skips: Iterator[bool] = itertools.cycle([i < n - 1 for n in window_sizes for i in range(n)])

        def rank_loss(model: nn.Module, batch):
            if next(skips):
                with no_sync():
                    return loss_of(model, batch)
            return loss_of(model, batch)

        return rank_loss

    def finish(self, outcome) -> None:
        """Each rank's step losses are its share (its loss sum over the window's global
        units): summed over the ranks they are the window's mean. One collective at the
        end, none in the loop."""
        losses = torch.tensor(outcome.steps["loss"], dtype=torch.float64)
        # The fewest and the most steps any rank recorded, so that every rank takes the
        # same branch (one raising alone would leave the others waiting in a collective).
        counts = torch.tensor([len(losses), -len(losses)], dtype=torch.int64)
        dist.all_reduce(counts, op=dist.ReduceOp.MIN)
        fewest, most = int(counts[0]), -int(counts[1])
        if fewest != most:
            raise RuntimeError(f"ranks recorded different step counts ({fewest} to {most})")
        if self.device.type == "cuda":  # NCCL reduces device tensors
            losses = losses.to(self.device)
        dist.all_reduce(losses)
        outcome.steps["loss"][:] = losses.tolist()

    def trial_fields(self, row: dict) -> dict:
        """This rank's trials columns (rank 0's become the trial's)."""
        rate = row.get("samples_per_s")
        return {
            "micro_batch_size": self.parallel_plan.rank_batch_size,
            "samples_per_s_per_rank": None if rate is None else rate / self.world_size,
            **self.counter.fields(),
        }

    def extra(self) -> dict:
        return {"rank": self.rank, "allreduce_buckets": self.counter.buckets}


def join(config, samples: int) -> RankHooks:
    """Join the process group the environment describes, as a rank of ``config``."""
    rank, world, local_rank = rank_from_env()
    if world != config.nproc:
        raise ConfigError(f"nproc is {config.nproc} but WORLD_SIZE is {world}")
    plan = parallel_plan(config, samples)
    device = rank_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = dt.timedelta(seconds=DEFAULT_TIMEOUT_S)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    return RankHooks(plan, rank, device, config.sync)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
