"""What the tutorial's DataLoader costs: its 5-epoch N=10000 B=32 example three ways.

1. the tutorial's loop written out plainly (TensorDataset + DataLoader, shuffle=True);
2. bench's training loop with ``data_path="dataloader"`` (same DataLoader, bench's
   bookkeeping: per-step loss/grad-norm/timing records, flushed in batches);
3. bench's training loop with the default fast path (data on the device, index_select).

Interleaved (1, 2, 3, 1, 2, 3, ...), repeated, wall time of the training loop only
(model and data built beforehand, no evaluation). Prints samples/s per variant as
median [min, max] and the ratios to the tutorial loop, per repeat, as median [min, max].

    python scripts/bench_data_path.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from bench.config import TrialConfig
from bench.train import train
from bench.trial import prepare

N, B, E = 10_000, 32, 5


def tutorial_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(0)
    dataloader = DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True, drop_last=False)
    model = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 2))
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for _epoch in range(E):
        for inputs, targets in dataloader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def bench_loop(data_path: str) -> float:
    config = TrialConfig(
        workload="seed-mlp",
        samples=N,
        batch_size=B,
        epochs=E,
        lr=0.01,
        device="cpu",
        data_path=data_path,
        eval_every=0,
    )
    workload, plan, device = prepare(config)
    start = time.perf_counter()
    _, outcome = train(config, workload, plan, device)
    elapsed = time.perf_counter() - start
    assert outcome.samples_seen == N * E
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 10, generator=g), torch.randint(0, 2, (N,), generator=g)
    variants = {
        "tutorial DataLoader loop": lambda: tutorial_loop(x, y),
        "bench, data_path=dataloader": lambda: bench_loop("dataloader"),
        "bench, data_path=tensor (default)": lambda: bench_loop("tensor"),
    }
    for fn in variants.values():  # warm-up: imports, allocator, first-call costs
        fn()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            rates[name].append(N * E / fn())
    base = rates["tutorial DataLoader loop"]
    print(
        f"seed-mlp, N={N}, B={B}, E={E}, CPU threads={args.threads}, repeats={args.repeats} (interleaved)"
    )
    print(
        f"{'variant':<36} {'samples/s median [min, max]':>30} {'ratio to tutorial median [min, max]':>38}"
    )
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(
            f"{name:<36} {statistics.median(values):>12,.0f} [{min(values):,.0f}, {max(values):,.0f}]"
            f"   {statistics.median(ratios):>10.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        )


if __name__ == "__main__":
    main()
