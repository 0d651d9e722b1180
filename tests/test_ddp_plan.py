"""Plan arithmetic on N ranks (``bench plan --world-size``): golden numbers, bench's split
against the 1-process plan, and DistributedSampler's own lengths."""

import json

import pytest

from bench.cli import main
from bench.ddp.plan import make_parallel_plan
from bench.errors import ConfigError
from bench.plan import make_plan


def test_tutorial_numbers_on_two_ranks():
    # N=10000, b=8, k=4 on 2 ranks: a global micro-batch of 16, an effective batch of 64.
    p = make_parallel_plan(world_size=2, samples=10_000, batch_size=8, accumulation_steps=4)
    assert p.global_micro_batch_size == 16
    assert p.plan.effective_batch_size == 64
    assert p.micro_batches_per_rank == 625
    assert p.plan.steps_per_epoch == 157  # ceil(625 / 4): one short window of 1
    assert p.plan.short_window_micro_batches == 1
    assert p.last_micro_batch_sizes() == [8, 8]
    assert p.samples_per_rank() == [5000, 5000]
    assert p.sampler_numbers(drop_last=False) == {
        "samples_per_rank": 5000,
        "repeated_samples": 0,
        "dropped_samples": 0,
        "micro_batches_per_rank": 625,
        "steps_per_epoch": 157,
    }


def test_short_last_micro_batch_fills_ranks_in_order():
    # N=10, b=2, 4 ranks: global micro-batches [0, 8) and [8, 10); the second gives rank 0
    # two samples and ranks 1-3 none. DistributedSampler pads 10 to 12 (2 repeated) or
    # drops 2, and its ranks run 2 or 1 micro-batches where bench's run 2.
    p = make_parallel_plan(world_size=4, samples=10, batch_size=2)
    assert p.micro_batches_per_rank == 2
    assert p.last_micro_batch_sizes() == [2, 0, 0, 0]
    assert p.samples_per_rank() == [4, 2, 2, 2]
    pad, drop = p.sampler_numbers(drop_last=False), p.sampler_numbers(drop_last=True)
    assert (pad["samples_per_rank"], pad["repeated_samples"], pad["micro_batches_per_rank"]) == (
        3,
        2,
        2,
    )
    assert (drop["samples_per_rank"], drop["dropped_samples"], drop["micro_batches_per_rank"]) == (
        2,
        2,
        1,
    )


@pytest.mark.parametrize("partial_window", ["step", "drop"])
@pytest.mark.parametrize("epochs, max_steps", [(3, None), (3, 7), (None, 4)])
def test_synced_backwards_count_the_run(partial_window, epochs, max_steps):
    # N=100, b=4 on 3 ranks: 9 micro-batches per epoch (the last of 4 samples), k=2:
    # windows 2, 2, 2, 2 and a short 1 (stepped, or dropped).
    p = make_parallel_plan(
        world_size=3, samples=100, batch_size=4, accumulation_steps=2,
        epochs=epochs, max_steps=max_steps, partial_window=partial_window,
    )  # fmt: skip
    run = [len(p.plan.window(s)) for _, s, _ in p.plan.steps()]
    assert p.synced_backwards("window") == len(run) == p.plan.total_steps
    assert p.synced_backwards("every") == sum(run)
    assert p.to_dict()["allreduces_per_bucket_every"] == sum(run)


def test_drop_last_drops_the_short_global_micro_batch():
    p = make_parallel_plan(world_size=2, samples=100, batch_size=8, drop_last=True)
    assert p.micro_batches_per_rank == 6  # floor(100 / 16)
    assert p.to_dict()["samples_dropped_per_epoch"] == 4
    assert p.last_micro_batch_sizes() == [8, 8]


@pytest.mark.parametrize("mode, b, global_b", [("sgd", 1, 3), ("bgd", 34, 100)])
def test_sgd_and_bgd(mode, b, global_b):
    p = make_parallel_plan(world_size=3, samples=100, mode=mode, batch_size=None)
    assert (p.rank_batch_size, p.plan.micro_batch_size) == (b, global_b)
    assert p.plan.mode == mode
    assert sum(p.samples_per_rank()) == 100


@pytest.mark.parametrize("n", [7, 16, 100, 101])
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_split_the_one_process_micro_batches_exactly(n, b, world, k, drop_last):
    if b * world * k > n:
        with pytest.raises(ConfigError, match="exceeds samples"):
            make_parallel_plan(world_size=world, samples=n, batch_size=b, accumulation_steps=k)
        return
    p = make_parallel_plan(
        world_size=world, samples=n, batch_size=b, accumulation_steps=k, drop_last=drop_last
    )
    single = make_plan(samples=n, batch_size=b * world, accumulation_steps=k, drop_last=drop_last)
    assert p.plan == single  # same windows, steps and short window as 1 process of b*N
    for m in range(single.micro_batches_per_epoch):
        start, stop = single.micro_batch_slice(m)
        parts = [p.rank_slice(r, start, stop) for r in range(world)]
        covered = [i for a, z in parts for i in range(a, z)]
        assert covered == list(range(start, stop))  # in order, each position once
        assert all(z - a <= b for a, z in parts)


@pytest.mark.parametrize("n, world", [(10, 4), (12, 4), (101, 3), (7, 2)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_numbers_match_distributed_sampler(n, world, drop_last):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, DistributedSampler

    p = make_parallel_plan(world_size=world, samples=n, batch_size=2)
    numbers = p.sampler_numbers(drop_last=drop_last)
    data = torch.arange(n)
    for rank in range(world):
        sampler = DistributedSampler(
            data, num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last
        )
        assert len(sampler) == numbers["samples_per_rank"]
        loader = DataLoader(data, batch_size=p.rank_batch_size, sampler=sampler)
        assert len(loader) == numbers["micro_batches_per_rank"]
    seen = len(
        {
            int(i)
            for r in range(world)
            for i in DistributedSampler(
                data, num_replicas=world, rank=r, shuffle=False, drop_last=drop_last
            )
        }
    )
    assert seen == n - numbers["dropped_samples"]


def test_cli_world_size_json_and_errors(capsys):
    run = ["plan", "--samples", "10", "--batch-size", "2"]
    assert main([*run, "--world-size", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["world_size"] == 4
    assert data["global_micro_batch_size"] == 8
    assert data["micro_batches_per_rank_per_epoch"] == 2
    assert data["last_micro_batch_size_per_rank"] == [2, 0, 0, 0]
    assert data["sampler_pad_repeated_samples"] == 2
    assert data["steps_per_epoch"] == 2
    assert main([*run, "--world-size", "4"]) == 0
    assert "last micro batch size per rank            2, 0, 0, 0" in capsys.readouterr().out
    assert main([*run, "--world-size", "8"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "bench: error: micro-batch b*world_size = 2*8 = 16 exceeds samples 10: "
        "lower batch_size or world_size"
    ]
    assert main([*run, "--world-size", "0"]) == 2
    assert "world_size must be an integer >= 1" in capsys.readouterr().err
