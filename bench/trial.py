"""One configuration, end to end: workload + plan + training loop + meters -> records."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bench import records, store
from bench.config import TrialConfig
from bench.errors import ConfigError
from bench.failures import describe, is_oom
from bench.plan import Plan
from bench.train import TrainOutcome, train
from bench.workloads import batch_layers, build_workload
from bench.workloads.base import Workload, data_sha256


@dataclass
class TrialResult:
    trial: dict  # one row of the trials table (bench.records.trial_row: every column)
    steps: pd.DataFrame  # the steps table of this trial

    @property
    def status(self) -> str:
        return self.trial["status"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available on this machine")
    return device


def prepare(config: TrialConfig) -> tuple[Workload, Plan, torch.device]:
    """Everything that can be wrong with a configuration is found here, before any work."""
    workload = build_workload(
        config.workload, samples=config.samples, options=config.workload_options
    )
    plan = config.plan(workload.n_train)
    device = resolve_device(config.device)
    return workload, plan, device


def _median_iqr(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) < 4:
        return statistics.median(values), None
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q3 - q1


def _throughput(outcome: TrainOutcome, plan: Plan) -> dict:
    """Rates over the measured window: steps after the timing warm-up, eval time excluded."""
    skip, steps = outcome.timing_warmup_steps, outcome.steps
    timed = max(0, len(steps) - skip)
    seconds = outcome.step_seconds[skip : len(steps)]
    total = sum(seconds)
    median_s, iqr_s = _median_iqr(seconds)
    out = {
        "train_time_s": steps.last("time_s") if steps else None,
        "timed_steps": timed,
        "samples_per_s": None,
        "steps_per_s": None,
        "step_time_ms_median": None if median_s is None else median_s * 1e3,
        "step_time_ms_iqr": None if iqr_s is None else iqr_s * 1e3,
        "timing_noisy": None if (iqr_s is None or not median_s) else bool(iqr_s / median_s >= 0.10),
    }
    if total > 0 and timed:
        out["samples_per_s"] = sum(steps["samples"][skip:]) / total
        out["steps_per_s"] = timed / total
        if outcome.tokens_seen is not None:
            out["tokens_per_s"] = sum(steps["tokens"][skip:]) / total
    return out


def run_trial(
    config: TrialConfig,
    *,
    sweep: str | None = None,
    results_dir: str | Path | None = None,
    prepared: tuple[Workload, Plan, torch.device] | None = None,
) -> TrialResult:
    """Run one configuration. Raises ConfigError only for invalid input, before any work;
    OOM, divergence and other errors during the run are recorded in the row's status.

    With ``config.nproc`` the trial is data-parallel (:mod:`bench.ddp`): called as a rank
    (torchrun's environment) it trains this rank's share; otherwise it starts the ranks
    and returns their combined result."""
    parallel = None
    if config.nproc is not None:
        from bench.ddp import launch

        if not launch.in_rank():
            return launch.run_ranks(config, sweep=sweep, results_dir=results_dir)
    workload, plan, device = prepared if prepared is not None else prepare(config)
    if config.nproc is not None:
        parallel = launch.join_rank(config, workload.n_train)
        plan, device = parallel.plan, parallel.device
    started_at = records.now()
    run = _measured_run(config, workload, plan, device, parallel)
    notes = run.notes
    row = {
        **_config_fields(config, plan, workload, sweep),
        **_outcome_fields(run),
        **_throughput(run.outcome, plan),
        "device": _device_name(device),
        "started_at": started_at,
    }
    if row["timed_steps"] == 0 and run.outcome.steps:
        notes.append("no steps after the timing warm-up: rates are null")
    fields = run.meter_fields
    notes.extend(fields.pop("notes", []))
    row.update(fields)
    row.update(_energy_per_sample(row, run.outcome, notes))
    row.update(_flops_fields(run, config, device, row["samples_per_s"]))
    row["env_id"] = _environment_id(results_dir)
    notes.extend(run.outcome.notes)
    row["notes"] = "; ".join(notes) if notes else None
    if parallel is not None:
        row.update(parallel.trial_fields(row))
        row["extra"] = records.extra_json(parallel.extra())

    steps = records.steps_frame(config.trial_key, run.outcome.steps)
    return TrialResult(trial=records.trial_row(**row), steps=steps)


@dataclass
class _Run:
    """What one measured training run left: the outcome, its status and the meters."""

    outcome: TrainOutcome
    status: str
    error: str | None
    meter_fields: dict
    flops_per_sample: float | None
    notes: list[str]


def _measured_run(
    config: TrialConfig, workload: Workload, plan: Plan, device: torch.device, parallel=None
) -> _Run:
    """Build the model, count its FLOPs, train it under the meters. An exception during
    the run (OOM included) becomes the run's status, not a traceback."""
    from bench import meters as meters_mod
    from bench.meters import flops as flops_mod

    notes: list[str] = []
    outcome = TrainOutcome()
    flops_per_sample = None
    if device.type == "cuda" and device.index is not None:
        # Events, synchronize() and new tensors use the current device: make it this one.
        torch.cuda.set_device(device)

    meters = meters_mod.TrialMeters(device, config)
    model = None
    try:
        # Inside the try: a model too big to build is this trial's OOM, not a traceback.
        torch.manual_seed(config.seed)
        model = workload.make_model()
        # Counted before the meters start (on the meta device, so it allocates nothing).
        # Per *sample*: a padded token batch costs the same whatever its documents'
        # lengths, so dividing by the first batch's real tokens would bias every rate.
        first = tuple(t[: plan.micro_batch_size] for t in workload.train)
        count = flops_mod.count_train_flops(workload, model, first)
        if count.flops is not None:
            flops_per_sample = count.flops / int(first[0].shape[0])
        if count.note:
            notes.append(count.note)
        meters.start()
        train(
            config,
            workload,
            plan,
            device,
            model=model,
            outcome=outcome,
            on_window_start=meters.window_start,
            parallel=parallel,
        )
        status, error = outcome.status, outcome.error
    except Exception as exc:
        status = "oom" if is_oom(exc) else "failed"
        error = describe(exc)
    finally:
        try:
            meters.window_end()
        finally:
            meters.stop()
    del model
    if device.type == "cuda" and status == "oom":
        torch.cuda.empty_cache()
    return _Run(outcome, status, error, meters.fields(), flops_per_sample, notes)


def workload_columns(workload: Workload) -> dict:
    """The trials columns that follow from the workload alone: the same for every
    member of a stack, which makes them once (hashing the data, building the model)."""
    return {
        "data_sha256": data_sha256(workload),
        "batch_dependent_layers": batch_layers.batch_dependent_layers(workload),
    }


def _config_fields(
    config: TrialConfig, plan: Plan, workload: Workload, sweep: str | None, of_workload=None
) -> dict:
    """What was asked for: the configuration as the plan resolved it."""
    return {
        **records.config_columns(config),
        "sweep": sweep,
        "mode": plan.mode,
        "samples": plan.samples,
        "micro_batch_size": plan.micro_batch_size,
        "accumulation_steps": plan.accumulation_steps,
        "effective_batch_size": plan.effective_batch_size,
        "partial_window": plan.partial_window,
        "drop_last": plan.drop_last,
        **(of_workload or workload_columns(workload)),
        "planned_steps": plan.total_steps,
    }


def observed_columns(
    config: TrialConfig,
    plan: Plan,
    workload: Workload,
    outcome: TrainOutcome,
    *,
    status: str,
    error: str | None,
    sweep: str | None,
    of_workload: dict | None = None,
) -> dict:
    """The trials columns that follow from a configuration, its plan and what its
    training observed (status, progress, losses, throughput): what ``run_trial`` puts in
    a row, for rows built from a loop other than ``bench.train`` (``bench.stack``).
    ``of_workload``: ``workload_columns(workload)``, where the caller has them."""
    run = _Run(outcome, status, error, {}, None, [])
    return {
        **_config_fields(config, plan, workload, sweep, of_workload),
        **_outcome_fields(run),
        **_throughput(outcome, plan),
    }


def _outcome_fields(run: _Run) -> dict:
    """How the run ended and how far it got."""
    outcome = run.outcome
    return {
        "status": run.status,
        "error": run.error,
        "stopped_early": outcome.stopped_early,
        "epochs_run": outcome.epochs_run,
        "optimizer_steps": outcome.optimizer_steps,
        "micro_batches": outcome.micro_batches,
        "samples_seen": outcome.samples_seen,
        "tokens_seen": outcome.tokens_seen,
        "final_loss": outcome.final_loss,
        "tail_loss": store.tail_loss(
            outcome.steps["loss"], outcome.steps["samples"], outcome.steps["tokens"]
        ),
        "best_val_loss": outcome.best_val_loss,
        "restored_val_loss": outcome.restored_val_loss,
        "skipped_steps": outcome.skipped_steps,
        "b_simple": outcome.b_simple,
    }


def _energy_per_sample(row: dict, outcome: TrainOutcome, notes: list[str]) -> dict:
    """energy_j_per_sample, when the energy window held training alone."""
    if row.get("energy_j") is None or not row["samples_per_s"]:
        return {}
    skip = outcome.timing_warmup_steps
    evaluations = sum(v is not None for v in outcome.steps["val_loss"][skip:])
    if evaluations:  # the energy window is wall time: it holds the evaluations too
        notes.append(
            f"energy_j includes {evaluations} evaluation pass(es); energy_j_per_sample "
            "is left null (eval_every = 0 measures training alone)"
        )
        return {}
    return {"energy_j_per_sample": row["energy_j"] / sum(outcome.steps["samples"][skip:])}


def _flops_fields(
    run: _Run, config: TrialConfig, device: torch.device, samples_per_s: float | None
) -> dict:
    """FLOPs per sample, step and loss unit, the device's peak, and MFU."""
    from bench.meters import flops as flops_mod

    per_sample = run.flops_per_sample
    steps_done, samples_done = run.outcome.optimizer_steps, run.outcome.samples_seen
    # Per unit of the loss (target token for char-lm, padding's share included).
    tokens = run.outcome.tokens_seen
    units_done = tokens if tokens is not None else samples_done
    peak = flops_mod.peak_flops_per_s(device, config.precision, override_tflops=config.peak_tflops)
    achieved = per_sample * samples_per_s if per_sample and samples_per_s else None
    return {
        "flops_per_sample": per_sample,
        "flops_per_step": (
            per_sample * samples_done / steps_done if per_sample and steps_done else None
        ),
        "flops_per_unit": (
            per_sample * samples_done / units_done if per_sample and units_done else None
        ),
        "peak_flops_per_s": peak,
        "mfu": flops_mod.mfu(achieved, peak),
    }


def _environment_id(results_dir: str | Path | None) -> str:
    """The machine + software fingerprint; written next to the results when there are."""
    from bench.meters import env as env_mod

    environment = env_mod.environment()
    if results_dir is not None:
        env_mod.write_environment(results_dir, environment)
    return env_mod.env_id(environment)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def write_result(result: TrialResult, folder: str | Path, *, per_key: bool = True) -> None:
    store.write_trial(folder, result.trial, result.steps, per_key=per_key)
