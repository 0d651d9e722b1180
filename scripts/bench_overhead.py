#!/usr/bin/env python3
"""Does measuring change what is measured? bench (run_trial, all meters on) vs bare loops.

For each workload, the same training (same model, data, batch size, optimizer, steps, no
evaluation) is run three ways, interleaved in a rotating order so drift cancels,
``--repeats`` times:

- tutorial: the hand-written loop the seed tutorial teaches (``loss.backward()``);
  bench's step makes the same public calls (``Tensor.backward``, ``torch.optim``), so
  bench / tutorial is the cost of bench's own bookkeeping;
- lean: the same loop calling the autograd engine's private entry point
  (``torch.autograd.Variable._execution_engine.run_backward``) directly, skipping
  ``torch.autograd.backward``'s Python (~7 us a step on the CPU): a floor for a
  hand-tuned Python loop, which bench does not use; bench / lean adds the public API's
  Python to the bookkeeping;
- bench: ``bench.trial.run_trial`` with every meter on and its defaults (sampled gradient
  norms included), ``eval_every = 0`` because the bare loops do not evaluate.

Throughput is samples per second over the steps after the same timing warm-up:

- bare loops: ``time.perf_counter`` around those steps (one device sync at the end on CUDA);
- bench (clock): the trial row's ``samples_per_s`` (bench's own step clock, which leaves
  out its flushes);
- bench (wall): samples after warm-up / ``window_wall_s`` (perf_counter from the meters'
  window_start to window_end: flushes and wind-down included), an independent check that
  the step clock does not flatter bench;
- median step (CPU): bare median step time / bench's ``step_time_ms_median``, robust to
  bursts of contention from other processes.

Each ratio bench / bare is reported per round, then its median and spread (IQR, min, max).
Target (issue 3): >= 0.97 on CPU for seed-mlp and teacher-mlp.

``--variant sampler`` runs bench with the RSS sampler thread forced on
(BENCH_RSS_METHOD=sampler): the cost of a Python thread waking every few ms, which is
what the NVML sampler costs on a GPU run. ``--rss-miss`` measures how much such a sampler
misses of short RSS peaks, against the kernel's high-water mark.
``scripts/step_instructions.py`` counts instructions per step instead (valgrind): no
noise, for attributing single microseconds.

    python scripts/bench_overhead.py --threads 1           # both workloads, 7 rounds
    python scripts/bench_overhead.py --variant sampler --repeats 5
    python scripts/bench_overhead.py --rss-miss
    python scripts/bench_overhead.py --noise-scale 256 --threads 1   # B_simple's cost

``--noise-scale EVERY`` runs bench with the gradient noise scale measured every EVERY
steps against bench with it off, interleaved, at k = 1 (each sampled micro-batch run as
two halves) and k = 4 (the same effective batch), see ``noise_scale_cost``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.config import TrialConfig  # noqa: E402
from bench.trial import run_trial  # noqa: E402
from bench.workloads import build_workload  # noqa: E402
from bench.workloads.base import Workload  # noqa: E402

CONFIGS = {
    # The tutorial's example at its batch size: tiny steps, so per-step harness overhead
    # shows at its largest.
    "seed-mlp": dict(workload="seed-mlp", samples=10_000, batch_size=32, epochs=2, lr=0.01),
    "teacher-mlp": dict(workload="teacher-mlp", samples=8192, batch_size=32, epochs=2, lr=0.01),
}


def bare_loop(
    config: TrialConfig, device: torch.device, lean: bool, workload: Workload | None = None
) -> tuple[float, float]:
    """(samples/s over the timed steps, median step time in s) of a plain loop: device
    tensors, randperm per epoch, index_select batches, mean cross-entropy, SGD. No
    logging, no meters, no host reads until the end (per-step perf_counter on CPU only,
    where kernels run synchronously; ~0.1 us each). ``lean``: backward through the
    autograd engine's private entry point instead of ``loss.backward()``."""
    if workload is None:
        workload = build_workload(
            config.workload, samples=config.samples, options=config.workload_options
        )
    torch.manual_seed(config.seed)
    model = workload.make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    x, y = (t.to(device) for t in workload.train)
    n, b = x.shape[0], config.batch_size
    generator = torch.Generator().manual_seed(config.seed)
    run_backward = torch.autograd.Variable._execution_engine.run_backward
    warmup = config.timing_warmup_steps
    step = 0
    samples = 0
    t0 = None
    step_times: list[float] = []
    cpu = device.type == "cpu"
    last = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, b):
            index = order[start : start + b]
            xb, yb = x.index_select(0, index), y.index_select(0, index)
            loss = F.cross_entropy(model(xb), yb)
            if lean:
                run_backward((loss,), (torch.ones_like(loss),), False, False, (), True, True)
            else:
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if cpu:
                now = time.perf_counter()
                if step > warmup:
                    step_times.append(now - last)
                last = now
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            elif step > warmup:
                samples += xb.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = samples / (time.perf_counter() - t0)
    return rate, statistics.median(step_times) if step_times else float("nan")


def bench_run(config: TrialConfig) -> tuple[float, float, float]:
    """(samples/s by bench's clock, samples/s by the meters' window wall time, median
    step time in s)."""
    result = run_trial(config)
    row = result.trial
    if row["status"] != "ok":
        raise SystemExit(f"bench trial failed: {row['status']}: {row['error']}")
    skip = len(result.steps) - int(row["timed_steps"])
    timed = result.steps["samples"].iloc[skip:].sum()
    return row["samples_per_s"], timed / row["window_wall_s"], row["step_time_ms_median"] / 1e3


def summary(values: list[float]) -> str:
    q = (
        statistics.quantiles(values, n=4, method="inclusive")
        if len(values) >= 2
        else [values[0]] * 3
    )
    return (
        f"median {statistics.median(values):.3f}  IQR [{q[0]:.3f}, {q[2]:.3f}]  "
        f"min {min(values):.3f}  max {max(values):.3f}  (n={len(values)})"
    )


BASELINES = ("tutorial", "lean")
ORDERS = (  # every run kind in every position, so a drift in the machine's speed cancels
    ("tutorial", "bench", "lean"),
    ("lean", "tutorial", "bench"),
    ("bench", "lean", "tutorial"),
)


def compare(name: str, repeats: int, variant: str, device: torch.device) -> dict:
    config = TrialConfig.from_mapping({**CONFIGS[name], "device": device.type, "eval_every": 0})
    if variant == "same-work":  # the bare loops record no gradient norm: nor does bench here
        config = config.replace(grad_norm_every=0)
    if variant == "sampler":
        os.environ["BENCH_RSS_METHOD"] = "sampler"
    else:
        os.environ.pop("BENCH_RSS_METHOD", None)
    for lean in (False, True):  # warm the process: allocator, kernels, imports
        bare_loop(config, device, lean)
    bench_run(config)
    ratios = {(base, kind): [] for base in BASELINES for kind in ("clock", "wall", "median_step")}
    rates: dict[str, list[float]] = {kind: [] for kind in ("tutorial", "lean", "bench")}
    for i in range(repeats):
        got = {}
        for which in ORDERS[i % len(ORDERS)]:
            if which == "bench":
                got[which] = bench_run(config)
            else:
                got[which] = bare_loop(config, device, lean=which == "lean")
        clock, wall, bench_step = got["bench"]
        rates["bench"].append(clock)
        line = [f"  {name} round {i + 1}: bench {clock:,.0f}/s (wall {wall:,.0f}/s)"]
        for base in BASELINES:
            rate, step = got[base]
            rates[base].append(rate)
            ratios[base, "clock"].append(clock / rate)
            ratios[base, "wall"].append(wall / rate)
            ratios[base, "median_step"].append(step / bench_step)
            line.append(
                f"{base} {rate:,.0f}/s: ratio {clock / rate:.3f} "
                f"(wall {wall / rate:.3f}, median step {step / bench_step:.3f})"
            )
        print(" | ".join(line), flush=True)
    os.environ.pop("BENCH_RSS_METHOD", None)
    return {
        "name": name,
        "variant": variant,
        "rates": {k: statistics.median(v) for k, v in rates.items()},
        "ratios": ratios,
    }


# -- what a sampler thread costs the training thread ------------------------------------


def sampler_cost(name: str, repeats: int, intervals_ms: list[float]) -> None:
    """bench with no thread (kernel high-water mark) vs bench with the RSS sampler thread
    at each interval, interleaved; ratio of median step times (thread / no thread)."""
    config = TrialConfig.from_mapping({**CONFIGS[name], "device": "cpu"})
    bench_run(config)  # warm
    ratios: dict[float, list[float]] = {i: [] for i in intervals_ms}
    for r in range(repeats):
        for interval in intervals_ms:
            os.environ.pop("BENCH_RSS_METHOD", None)
            _, _, plain = bench_run(config)
            os.environ["BENCH_RSS_METHOD"] = "sampler"
            os.environ["BENCH_METER_INTERVAL_MS"] = str(interval)
            _, _, sampled = bench_run(config)
            ratios[interval].append(plain / sampled)
        print(
            f"  {name} round {r + 1}: "
            + ", ".join(f"{i:g} ms: {v[-1]:.3f}" for i, v in ratios.items()),
            flush=True,
        )
    os.environ.pop("BENCH_RSS_METHOD", None)
    for interval, values in ratios.items():
        print(
            f"{name}: throughput with a sampler thread every {interval:g} ms / without: {summary(values)}"
        )


# -- what measuring the gradient noise scale costs ----------------------------------------


def noise_scale_cost(name: str, repeats: int, every: int, k: int, epochs: int) -> None:
    """bench with B_simple measured every ``every`` steps vs not at all (``noise_scale_every
    = 0``), interleaved with the order alternating. Two figures per round:

    - throughput on / off (bench's clock, and the window wall time): what a user sees,
      but a ~1 % effect inside load noise of several %;
    - the cost share from the measured run's own steps: a sampled step's time over a
      plain step's (lower quartiles), minus 1, divided by ``every``: the overhead at this
      interval, from one run, so machine drift between runs does not enter it.
    """
    import math

    base = {**CONFIGS[name], "device": "cpu", "eval_every": 0, "accumulation_steps": k}
    base["epochs"] = epochs  # enough sampled steps for a quartile of their times
    base["batch_size"] = CONFIGS[name]["batch_size"] // k  # the same effective batch
    on = TrialConfig.from_mapping({**base, "noise_scale_every": every})
    off = on.replace(noise_scale_every=0)
    bench_run(on)  # warm
    clock, wall, share, plain = [], [], [], []
    for r in range(repeats):
        got = {}
        for which in ("on", "off") if r % 2 == 0 else ("off", "on"):
            config = on if which == "on" else off
            result = run_trial(config)
            row = result.trial
            skip = len(result.steps) - int(row["timed_steps"])
            timed = result.steps["samples"].iloc[skip:].sum()
            got[which] = (row["samples_per_s"], timed / row["window_wall_s"], result.steps)
        clock.append(got["on"][0] / got["off"][0])
        wall.append(got["on"][1] / got["off"][1])
        steps = got["on"][2]
        dt = steps["time_s"].diff().iloc[1:]
        sampled = (steps["step"].iloc[1:] % every == 0).to_numpy()
        # Lower quartiles, not medians: on a loaded machine a step is now and then
        # preempted for milliseconds, and a step 3x as long is 3x as likely to be, which
        # moves the median of a few dozen sampled steps but not their lower quartile.
        typical = _lower_quartile(dt[~sampled])
        extra = _lower_quartile(dt[sampled]) / typical - 1
        share.append(extra / every)
        # Whether a run with B_simple on is slower outside its sampled steps too.
        plain.append(typical / _lower_quartile(got["off"][2]["time_s"].diff().iloc[1:]))
        print(
            f"  {name} k={k} round {r + 1}: throughput on/off {clock[-1]:.3f} (wall {wall[-1]:.3f}); "
            f"a sampled step {extra + 1:.2f}x a plain step ({typical * 1e6:.0f} us, lower "
            f"quartiles of {int(sampled.sum())} and {int((~sampled).sum())}): "
            f"overhead {100 * share[-1]:.2f} % at every={every}; plain step on/off {plain[-1]:.3f}",
            flush=True,
        )
    print(f"{name} k={k}, noise_scale_every={every}, 1-min load {os.getloadavg()[0]:.1f}:")
    print(f"  throughput on/off (bench clock): {summary(clock)}")
    print(f"  throughput on/off (window wall): {summary(wall)}")
    print(f"  overhead from sampled steps (%): {summary([100 * v for v in share])}")
    print(f"  plain step time on/off:          {summary(plain)}")
    assert not any(math.isnan(v) for v in share)


def _lower_quartile(values) -> float:
    return statistics.quantiles(list(values), n=4, method="inclusive")[0]


# -- how much a sleeping sampler misses ---------------------------------------------------


def rss_miss(interval_ms: float, trials: int) -> None:
    """Short RSS spikes of known size and duration, seen by a sampler vs the kernel's HWM.

    A spike is an anonymous mapping populated in one call (MAP_POPULATE: the kernel
    faults every page in, the GIL released), held, then unmapped. Its duration (populate
    + hold + unmap) is measured; the sampler's phase is varied from spike to spike.
    """
    import mmap

    from bench.meters import memory

    if not memory.reset_rss_high_water():
        print("rss-miss: the kernel high-water mark is not resettable here; nothing to compare")
        return
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    print(f"rss-miss: sampler every {interval_ms:g} ms, {trials} spikes per row")
    print(
        f"  {'MiB':>4} {'hold ms':>8} {'spike ms':>9} {'sampler caught':>15} {'sampler saw':>12} {'hwm caught':>11}"
    )
    for size_mib, hold_ms in ((2, 0), (2, 2), (2, 5), (2, 10), (2, 20), (8, 0), (32, 0)):
        size = size_mib * 2**20
        caught = hwm_caught = 0
        seen_fraction, durations = [], []
        for k in range(trials):
            rss_meter = memory.RssMeter(prefer="sampler")
            rss_meter.start()
            sampler = memory.PeriodicSampler(interval_ms / 1000, [rss_meter.probe])
            sampler.start()
            time.sleep((interval_ms / 1000) * (1 + k / trials))  # vary the phase
            memory.reset_rss_high_water()
            base_hwm = memory.rss_high_water_bytes()
            t0 = time.perf_counter()
            spike = mmap.mmap(-1, size, flags=flags)
            if hold_ms:
                time.sleep(hold_ms / 1000)
            spike.close()
            durations.append((time.perf_counter() - t0) * 1e3)
            hwm_growth = memory.rss_high_water_bytes() - base_hwm
            time.sleep(2 * interval_ms / 1000)
            sampler.stop()
            rss_meter.stop()
            growth = rss_meter.peak_bytes - rss_meter.baseline_bytes
            seen_fraction.append(max(0.0, min(1.0, growth / size)))
            caught += growth >= 0.9 * size
            hwm_caught += hwm_growth >= 0.9 * size
        print(
            f"  {size_mib:4d} {hold_ms:8.1f} {statistics.median(durations):9.2f} {caught / trials:15.0%} "
            f"{statistics.mean(seen_fraction):12.0%} {hwm_caught / trials:11.0%}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--variant",
        choices=["default", "same-work", "sampler"],
        default="default",
        help="same-work: bench without its sampled gradient norm, which the bare loops lack",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--rss-miss", action="store_true", help="only measure the RSS sampler's misses"
    )
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument(
        "--sampler-cost",
        action="store_true",
        help="only measure what a sampler thread costs the loop",
    )
    parser.add_argument(
        "--noise-scale",
        type=int,
        metavar="EVERY",
        help="only measure what B_simple costs, sampled every EVERY steps (bench's default: 256)",
    )
    parser.add_argument(
        "--accumulation-steps",
        type=int,
        nargs="+",
        default=[1, 4],
        help="--noise-scale: the k to measure at (the effective batch stays the same)",
    )
    parser.add_argument(
        "--epochs", type=int, default=8, help="--noise-scale: epochs per run (default 8)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_miss:
        rss_miss(args.interval_ms, trials=28)
        return 0
    if args.noise_scale is not None:
        for name in args.workloads:
            for k in args.accumulation_steps:
                noise_scale_cost(name, args.repeats, args.noise_scale, k, args.epochs)
        return 0
    if args.sampler_cost:
        for name in args.workloads:
            sampler_cost(name, args.repeats, [1.0, 5.0, 20.0])
        return 0
    os.environ["BENCH_METER_INTERVAL_MS"] = str(args.interval_ms)
    device = torch.device(args.device)
    print(
        f"bench_overhead: device {device}, torch threads {torch.get_num_threads()}, variant {args.variant}"
    )
    results = [compare(name, args.repeats, args.variant, device) for name in args.workloads]
    print()
    for r in results:
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in r["rates"].items())
        print(f"{r['name']} ({r['variant']}): samples/s {rates}")
        for base in BASELINES:
            for kind in ("clock", "wall", "median_step"):
                if kind == "median_step" and device.type != "cpu":
                    continue
                label = {
                    "clock": "bench clock",
                    "wall": "window wall",
                    "median_step": "median step",
                }
                print(f"  bench/{base:<8} ({label[kind]}): {summary(r['ratios'][base, kind])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
