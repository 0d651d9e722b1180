"""Epoch / micro-batch / step arithmetic on N ranks. Pure Python: imports no torch.

Each rank takes b samples per micro-batch, so one *global* micro-batch is b*N samples
and a window of k of them is b*k*N: the effective batch. bench splits the same seeded
per-epoch permutation a single process uses: global micro-batch m covers positions
[m*b*N, (m+1)*b*N) of the order and rank r takes its r-th run of b positions. The
global plan (:class:`bench.plan.Plan` at micro-batch b*N) is therefore exactly the
1-process plan, windows, short window and short last micro-batch included; in the last
global micro-batch the first ranks are full, one may be short and the rest empty (they
still run the step and join its all-reduce with zero gradients).

``torch.utils.data.DistributedSampler`` decides differently: it first makes the epoch
divisible by N, padding it by repeating the first samples (``drop_last=False``) or
dropping its tail (``drop_last=True``), then deals sample i to rank i mod N; each rank's
DataLoader batches its share. Its numbers are given next to bench's so a user can see
what a plain DDP script trains on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.errors import ConfigError
from bench.plan import Plan, make_plan

SYNCS = ("window", "every")


@dataclass(frozen=True, kw_only=True)
class ParallelPlan:
    """The global plan and how its micro-batches split across ``world_size`` ranks."""

    world_size: int
    rank_batch_size: int  # b: samples per rank per micro-batch
    plan: Plan  # the 1-process plan at micro-batch b * world_size

    @property
    def global_micro_batch_size(self) -> int:
        return self.rank_batch_size * self.world_size

    @property
    def micro_batches_per_rank(self) -> int:
        """Micro-batches every rank runs per epoch (the global count: ranks run in step)."""
        return self.plan.micro_batches_per_epoch

    def rank_slice(self, rank: int, start: int, stop: int) -> tuple[int, int]:
        """Rank ``rank``'s [start, stop) of the global micro-batch [start, stop)."""
        b = self.rank_batch_size
        first = min(start + rank * b, stop)
        return first, min(first + b, stop)

    def last_micro_batch_sizes(self) -> list[int]:
        """Samples each rank gets in the epoch's last micro-batch."""
        last = self.plan.micro_batch_slice(self.plan.micro_batches_per_epoch - 1)
        return [b - a for a, b in (self.rank_slice(r, *last) for r in range(self.world_size))]

    def samples_per_rank(self) -> list[int]:
        """Samples each rank trains on per epoch (before a dropped short window)."""
        full = (self.micro_batches_per_rank - 1) * self.rank_batch_size
        return [full + last for last in self.last_micro_batch_sizes()]

    def micro_batches_run(self) -> int:
        """Micro-batches each rank runs over the whole run (max_steps and a dropped short
        window included)."""
        plan, k = self.plan, self.plan.accumulation_steps
        per_epoch = sum(len(plan.window(s)) for s in range(1, plan.steps_per_epoch + 1))
        epochs, steps_left = divmod(plan.total_steps, plan.steps_per_epoch)
        # The windows of a cut epoch all come before its last one: k micro-batches each.
        return epochs * per_epoch + steps_left * k

    def synced_backwards(self, sync: str) -> int:
        """Backwards whose gradients DDP all-reduces, one call per gradient bucket each:
        one per optimizer step with ``sync = "window"``, every micro-batch's with "every"."""
        return self.plan.total_steps if sync == "window" else self.micro_batches_run()

    def sampler_numbers(self, *, drop_last: bool) -> dict:
        """What DistributedSampler(drop_last) + DataLoader(batch_size=b, drop_last as the
        plan's) give per epoch for the same N, b, k and world size."""
        n, world, b = self.plan.samples, self.world_size, self.rank_batch_size
        per_rank = n // world if drop_last else -(-n // world)
        micro = per_rank // b if self.plan.drop_last else -(-per_rank // b)
        k = self.plan.accumulation_steps
        steps = -(-micro // k) if self.plan.partial_window == "step" else micro // k
        return {
            "samples_per_rank": per_rank,
            "repeated_samples": max(0, per_rank * world - n),
            "dropped_samples": max(0, n - per_rank * world),
            "micro_batches_per_rank": micro,
            "steps_per_epoch": steps,
        }

    def to_dict(self) -> dict:
        """``bench plan --world-size``: the global plan with per-rank figures beside it."""
        plan = self.plan.to_dict()
        out = {
            "world_size": self.world_size,
            "samples": plan.pop("samples"),
            "mode": plan.pop("mode"),
        }
        plan.pop("micro_batch_size")
        plan.pop("micro_batches_per_epoch")
        out["micro_batch_size_per_rank"] = self.rank_batch_size
        out["global_micro_batch_size"] = self.global_micro_batch_size
        out.update(plan)
        out["micro_batches_per_rank_per_epoch"] = self.micro_batches_per_rank
        out["last_global_micro_batch_size"] = out.pop("last_micro_batch_size")
        out["last_micro_batch_size_per_rank"] = self.last_micro_batch_sizes()
        out["samples_per_rank_per_epoch"] = self.samples_per_rank()
        dropped = self.plan.samples - self.micro_batches_per_rank * self.global_micro_batch_size
        out["samples_dropped_per_epoch"] = max(0, dropped)  # drop_last: the short global batch
        for sync in SYNCS:
            out[f"allreduces_per_bucket_{sync}"] = self.synced_backwards(sync)
        for drop in (False, True):
            prefix = "sampler_drop_last" if drop else "sampler_pad"
            for key, value in self.sampler_numbers(drop_last=drop).items():
                out[f"{prefix}_{key}"] = value
        return out


def make_parallel_plan(*, world_size: int, **plan_values) -> ParallelPlan:
    """Validate and build a ParallelPlan; ``plan_values`` are :func:`bench.plan.make_plan`'s,
    with ``batch_size`` the per-rank micro-batch b."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be an integer >= 1, got {world_size!r}")
    # The 1-process plan first: it validates every value and resolves b for sgd / bgd.
    single = make_plan(**plan_values)
    if world_size == 1:
        return ParallelPlan(world_size=1, rank_batch_size=single.micro_batch_size, plan=single)
    samples = single.samples
    if single.mode == "bgd":
        # Full batch: the epoch is one global micro-batch, each rank a ceil(N/world) share.
        b, global_b = -(-samples // world_size), samples
    else:
        b = single.micro_batch_size
        global_b = b * world_size
    if global_b > samples:
        raise ConfigError(
            f"micro-batch b*world_size = {b}*{world_size} = {global_b} exceeds samples "
            f"{samples}: lower batch_size or world_size"
        )
    k = single.accumulation_steps
    if global_b * k > samples:
        raise ConfigError(
            f"effective batch b*k*world_size = {b}*{k}*{world_size} = {global_b * k} exceeds "
            f"samples {samples}: no window can hold it; lower accumulation_steps (at most "
            f"{samples // global_b} here) or world_size"
        )
    values = {**plan_values, "mode": "mbgd", "batch_size": global_b}
    plan = make_plan(**values)
    return ParallelPlan(
        world_size=world_size,
        rank_batch_size=b,
        plan=dataclasses.replace(plan, mode=single.mode),
    )


def parallel_plan(config, samples: int) -> ParallelPlan:
    """The ParallelPlan of a TrialConfig with ``nproc`` ranks over ``samples`` (N)."""
    return make_parallel_plan(world_size=config.nproc or 1, **config.plan_arguments(samples))
