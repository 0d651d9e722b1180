"""Results with planted answers, written through the results contract.

Used by the report/compare tests (known B_crit, known throughput change) and by
``scripts/bench_report_scale.py`` (1,000 trials x 10,000 steps). The planted laws:

- steps to reach ``target_loss`` at effective batch B follow McCandlish et al. (2018),
  "An Empirical Model of Large-Batch Training", eq. 2.11: S(B) = S_min (1 + B_crit / B);
- the loss decays exponentially, L(t) = L_inf + (L0 - L_inf) exp(-t / tau_B), with tau_B
  chosen so that L(S(B)) = target exactly; per-step noise has a relative sd of
  noise / sqrt(B) (a mean over B samples);
- throughput saturates with the micro-batch: samples/s = peak * b / (b + b_half);
- memory grows linearly with the micro-batch; micro-batches above ``oom_above`` OOM;
  with ``rss_start`` the CPU row is a growth over a start reading that drifts from trial to
  trial (a worker's earlier trials), plus ``rss_noise_bytes`` of noise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import records
from bench.config import TrialConfig
from bench.store import tail_loss, write_atomic

STARTED_AT = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)


@dataclass(frozen=True, kw_only=True)
class Synthetic:
    workload: str = "seed-mlp"
    # (micro_batch b, accumulation k) pairs; B = b*k
    shapes: tuple[tuple[int, int], ...] = ((1, 1), (4, 1), (16, 1), (64, 1), (16, 4), (256, 1))
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (0.01,)
    precisions: tuple[str, ...] = ("fp32",)
    samples: int = 4096
    s_min: float = 100.0
    b_crit: float = 32.0
    target_loss: float = 0.5
    loss0: float = 2.0
    loss_inf: float = 0.3
    noise: float = 0.2
    overshoot: float = 1.6  # steps run = overshoot * S(B)
    max_steps: int | None = None  # cap (then large-S configurations never reach the target)
    fixed_steps: int | None = None  # every trial runs exactly this many steps
    peak_samples_per_s: float = 20000.0
    b_half: float = 32.0
    throughput_factor: float = 1.0
    throughput_jitter: float = 0.01  # relative sd across seeds
    memory_base_bytes: int = 300 * 2**20
    memory_per_sample_bytes: int = 2 * 2**20
    memory_factor: float = 1.0
    oom_above: int | None = None
    rss_start: bool = False  # record cpu_baseline_rss_bytes, as a CPU sweep does
    rss_noise_bytes: float = 0.0  # sd of the CPU growth's noise (abs of a normal draw)
    noise_scale_every: int | None = None  # steps between b_simple values (None: no values)
    gpu: bool = True
    device: str = "cuda:0 (synthetic)"
    sweep: str = "synthetic"
    rng_seed: int = 0
    extra_config: dict = field(default_factory=dict)

    def steps_to_target(self, big_b: float) -> float:
        return self.s_min * (1.0 + self.b_crit / big_b)


def _config(spec: Synthetic, b: int, k: int, lr: float, precision: str, seed: int) -> TrialConfig:
    mode = "sgd" if b * k == 1 else ("bgd" if b * k >= spec.samples else "mbgd")
    return TrialConfig(
        workload=spec.workload,
        samples=spec.samples,
        mode=mode,
        batch_size=b,
        accumulation_steps=k,
        epochs=None,
        max_steps=100_000,
        lr=lr,
        precision=precision,
        seed=seed,
        **spec.extra_config,
    )


def write_synthetic(folder: str | Path, spec: Synthetic = Synthetic()) -> dict:
    """Write a sweep-shaped results folder; returns the planted truth."""
    folder = Path(folder)
    rng = np.random.default_rng(spec.rng_seed)
    written = 0
    for b, k in spec.shapes:
        for lr in spec.lrs:
            for precision in spec.precisions:
                for seed in spec.seeds:
                    cfg = _config(spec, b, k, lr, precision, seed)
                    row, steps = _trial(spec, cfg, rng)
                    write_atomic(steps, folder / "steps" / f"{cfg.trial_key}.parquet")
                    trials = records.trials_table([row])
                    write_atomic(trials, folder / "trials" / f"{cfg.trial_key}.parquet")
                    written += 1
    return {
        "trials": written,
        "b_crit": spec.b_crit,
        "s_min": spec.s_min,
        "target_loss": spec.target_loss,
    }


def _trial(spec: Synthetic, cfg: TrialConfig, rng: np.random.Generator) -> tuple[dict, pa.Table]:
    """One trial's row and steps table, drawn from the planted laws."""
    b, k = cfg.batch_size, cfg.accumulation_steps
    big_b = b * k
    thr = (
        spec.peak_samples_per_s
        * b
        / (b + spec.b_half)
        * spec.throughput_factor
        * (1.0 + spec.throughput_jitter * rng.standard_normal())
    )
    row = _identity(spec, cfg)
    if spec.oom_above is not None and b > spec.oom_above:
        row.update(status="oom", error="CUDA out of memory (synthetic)")
        return row, records.steps_table({})
    step_s = big_b / thr
    values, clean = _curve(spec, cfg, step_s, rng)
    n, loss = len(values["loss"]), values["loss"]
    mem = (spec.memory_base_bytes + spec.memory_per_sample_bytes * b) * spec.memory_factor
    row.update(
        status="ok",
        optimizer_steps=n,
        micro_batches=n * k,
        samples_seen=int(values["samples_seen"][-1]),
        final_loss=float(loss[-1]),
        tail_loss=tail_loss(loss, values["samples"]),
        best_val_loss=float(clean[-1]),
        train_time_s=float(values["time_s"][-1]),
        timed_steps=max(n - 3, 1),
        samples_per_s=thr,
        steps_per_s=thr / big_b,
        step_time_ms_median=1000.0 * step_s,
        step_time_ms_iqr=1000.0 * step_s * 0.07,
        timing_noisy=False,
        peak_allocated_bytes=int(mem * 0.8) if spec.gpu else None,
        peak_reserved_bytes=int(mem) if spec.gpu else None,
        nvml_peak_used_bytes=int(mem + 500 * 2**20) if spec.gpu else None,
        nvml_process_peak_bytes=int(mem + 400 * 2**20) if spec.gpu else None,
        cpu_peak_rss_bytes=int(mem * 1.5),
    )
    if spec.rss_start:
        start = spec.memory_base_bytes + int(rng.integers(0, 8 * 2**20))
        growth = mem - spec.memory_base_bytes * spec.memory_factor
        noise = abs(spec.rss_noise_bytes * rng.standard_normal())
        row.update(cpu_baseline_rss_bytes=start, cpu_peak_rss_bytes=int(start + growth + noise))
    if spec.noise_scale_every:
        row["b_simple"] = spec.b_crit
    return row, records.steps_table(values)


def _identity(spec: Synthetic, cfg: TrialConfig) -> dict:
    return {
        "trial_key": cfg.trial_key,
        "sweep": spec.sweep,
        "workload": spec.workload,
        "mode": cfg.mode,
        "samples": spec.samples,
        "micro_batch_size": cfg.batch_size,
        "accumulation_steps": cfg.accumulation_steps,
        "effective_batch_size": cfg.batch_size * cfg.accumulation_steps,
        "normalize": cfg.normalize,
        "partial_window": cfg.partial_window,
        "drop_last": cfg.drop_last,
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "scheduler": cfg.scheduler,
        "precision": cfg.precision,
        "data_path": cfg.data_path,
        "seed": cfg.seed,
        "device": spec.device,
        "env_id": "synthetic-env",
        "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
        "started_at": STARTED_AT,
    }


def _curve(
    spec: Synthetic, cfg: TrialConfig, step_s: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The steps columns of an ok trial, and its noise-free loss curve."""
    big_b = cfg.batch_size * cfg.accumulation_steps
    s_target = spec.steps_to_target(big_b)
    ln_ratio = math.log((spec.loss0 - spec.loss_inf) / (spec.target_loss - spec.loss_inf))
    tau = s_target / ln_ratio
    if spec.fixed_steps is not None:
        n = spec.fixed_steps
    else:
        n = math.ceil(spec.overshoot * s_target)
        if spec.max_steps is not None:
            n = min(n, spec.max_steps)
    t = np.arange(1, n + 1, dtype=np.float64)
    clean = spec.loss_inf + (spec.loss0 - spec.loss_inf) * np.exp(-t / tau)
    loss = clean * (1.0 + spec.noise / math.sqrt(big_b) * rng.standard_normal(n))
    step_times = step_s * (1.0 + 0.05 * rng.standard_normal(n)).clip(0.5, None)
    samples_seen = (t * big_b).astype(np.int64)
    values = {
        "trial_key": np.full(n, cfg.trial_key),
        "epoch": (samples_seen - 1) // spec.samples + 1,
        "step": t.astype(np.int64),
        "step_in_epoch": t.astype(np.int64),
        "micro_batches": np.full(n, cfg.accumulation_steps, dtype=np.int64),
        "samples": np.full(n, big_b, dtype=np.int64),
        "samples_seen": samples_seen,
        "loss": loss,
        "lr": np.full(n, cfg.lr),
        "grad_norm": np.abs(rng.standard_normal(n)),
        "time_s": np.cumsum(step_times),
    }
    if spec.noise_scale_every:
        sampled = t % spec.noise_scale_every == 0
        rise = spec.b_crit * (1.0 - 0.5 * np.exp(-t / tau))
        values["b_simple"] = np.where(sampled, rise, np.nan)
    return values, clean
