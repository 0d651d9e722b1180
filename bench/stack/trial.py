"""A stack of configurations, end to end: one workload, one stacked training run under
the meters, one trial row and steps table per member (``bench.records``).

Each member's row is what its solo run's row would hold for the configuration and the
losses; the time columns are the stack's cost per member (each step's time divided by
the stack size, so ``samples_per_s`` is the stack's throughput over all members) and say
so (``timing_basis = "stack"``); memory columns are the stack's peaks, the same in every
member's row; energy is the stack's divided by its size. A stack that runs out of memory
is split in two and each half runs again.
"""

from __future__ import annotations

import hashlib

import torch

from bench import records
from bench.config import TrialConfig
from bench.errors import ConfigError
from bench.failures import describe, is_oom
from bench.stack.group import members_differ_only_per_member
from bench.stack.train import train_stack
from bench.train_record import TrainOutcome
from bench.trial import TrialResult, observed_columns, prepare, workload_columns


def stack_id(configs: list[TrialConfig]) -> str:
    """16 hex digits naming a stacked run by its members' keys."""
    keys = ",".join(c.trial_key for c in configs)
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def run_stack(
    configs: list[TrialConfig], *, sweep: str | None = None, results_dir=None, split: bool = True
) -> list[TrialResult]:
    """Train ``configs`` (one stack key) as one stack; one TrialResult per member, in order.
    Raises ConfigError for configurations that cannot share a stack, before any work.
    ``split=False``: a stack out of memory stays one (its members "oom"), as an OOM
    probe of the stack's size needs."""
    if not configs or not members_differ_only_per_member(configs):
        raise ConfigError("a stack's configurations must share every setting but lr, "
                          "momentum, weight decay, schedule and seed (bench.stack.group)")  # fmt: skip
    workload, plan, device = prepare(configs[0])
    results = _run_once(configs, workload, plan, device, sweep, results_dir)
    if split and len(configs) > 1 and all(r.status == "oom" for r in results):
        half = len(configs) // 2
        return run_stack(configs[:half], sweep=sweep, results_dir=results_dir) + run_stack(
            configs[half:], sweep=sweep, results_dir=results_dir
        )
    return results


def _run_once(configs, workload, plan, device, sweep, results_dir) -> list[TrialResult]:
    from bench import meters as meters_mod

    started_at = records.now()
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    meters = meters_mod.TrialMeters(device, configs[0])
    outcomes = [TrainOutcome() for _ in configs]
    try:
        meters.start()
        outcomes = train_stack(configs, workload, plan, device, on_window_start=meters.window_start)
        status, error = None, None
    except Exception as exc:
        status, error = ("oom" if is_oom(exc) else "failed"), describe(exc)
    finally:
        try:
            meters.window_end()
        finally:
            meters.stop()
    if device.type == "cuda" and status == "oom":
        torch.cuda.empty_cache()
    shared, notes, per_sample = _shared_columns(
        configs, workload, plan, device, meters, results_dir
    )
    shared["started_at"] = started_at
    results, of_workload = [], workload_columns(workload)
    for config, outcome in zip(configs, outcomes, strict=True):
        row = observed_columns(
            config, plan, workload, outcome, status=status or outcome.status,
            error=error or outcome.error, sweep=sweep, of_workload=of_workload,
        )  # fmt: skip
        row.update(shared)
        row.update(_flops_columns(per_sample, outcome, device, config, row["samples_per_s"]))
        member_notes = [*notes, *outcome.notes]
        row["notes"] = "; ".join(member_notes) if member_notes else None
        steps = records.steps_frame(config.trial_key, outcome.steps)
        results.append(TrialResult(trial=records.trial_row(**row), steps=steps))
    return results


def _shared_columns(configs, workload, plan, device, meters, results_dir):
    """The columns every member's row shares (stack identity, device, environment, the
    stack's meters), the notes they share, and the counted FLOPs per sample."""
    from bench.meters import env as env_mod
    from bench.meters import flops as flops_mod

    fields = meters.fields()
    notes = list(fields.pop("notes", []))
    size = len(configs)
    if fields.get("energy_j") is not None:
        fields["energy_j"] /= size
    notes.append(
        f"stacked run of {size} members: time columns are the stack's time per member, "
        "memory columns the stack's peaks"
    )
    torch.manual_seed(configs[0].seed)
    model = workload.make_model()
    first = tuple(t[: plan.micro_batch_size] for t in workload.train)
    count = flops_mod.count_train_flops(workload, model, first)
    per_sample = None if count.flops is None else count.flops / int(first[0].shape[0])
    if count.note:
        notes.append(count.note)
    environment = env_mod.environment()
    if results_dir is not None:
        env_mod.write_environment(results_dir, environment)
    columns = {
        **fields,
        "stack_size": size,
        "stack_id": stack_id(configs),
        "timing_basis": "stack",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "env_id": env_mod.env_id(environment),
    }
    return columns, notes, per_sample


def _flops_columns(per_sample, outcome, device, config, samples_per_s) -> dict:
    """FLOPs per sample and step, the device's peak and MFU (the stack's achieved rate:
    samples_per_s is per member-time, i.e. over all members)."""
    from bench.meters import flops as flops_mod

    steps, samples = outcome.optimizer_steps, outcome.samples_seen
    peak = flops_mod.peak_flops_per_s(device, config.precision, override_tflops=config.peak_tflops)
    achieved = per_sample * samples_per_s if per_sample and samples_per_s else None
    return {
        "flops_per_sample": per_sample,
        "flops_per_step": per_sample * samples / steps if per_sample and steps else None,
        "flops_per_unit": per_sample,
        "peak_flops_per_s": peak,
        "mfu": flops_mod.mfu(achieved, peak),
    }
