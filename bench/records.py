"""The results contract: every column bench writes, declared once, with its type.

Three tables, one record type each: ``TrialRecord`` (one row per trial), ``StepRecord``
(one row per optimizer step), ``ProbeRecord`` (one row per ``bench oom`` probe). Units
are in the names (``_bytes``, ``_s``, ``_ms``, ``_j``, ``_per_s``); a comment says more
where a name cannot. The pyarrow schemas derive from the dataclasses, so every file of
one kind has the same columns in the same order with the same types, whatever the
trial's status: a value that does not apply is null, never 0 and never a guess.

Writing is strict: a row with a key its record does not declare, or a value that does
not convert to the declared type, raises :class:`RecordError` (a bug in the writer,
caught before anything reaches disk). Reading is lenient: :func:`upgrade` brings a table
of an older ``SCHEMA_VERSION`` to the current schema (missing columns null, ISO 8601
strings to timestamps). Measurement detail that is not a contract column goes in the
one ``extra`` column (a JSON object, :func:`extra_json`), never in a column of its own.

Adding, renaming or changing a column bumps ``SCHEMA_VERSION``. How version 1 files
differ from version 2 (``upgrade`` reads both): ``started_at`` is ISO 8601 text;
``flops_per_sample``, ``attempt`` and ``optuna_trial`` are undeclared columns whose type
varies between files (null-typed where a trial failed); ``extra`` is absent; probes
files have no ``schema_version``. Version 3 adds columns only (version 2 files read
them as null): trials ``batch_dependent_layers``, ``world_size``, ``sync``,
``stack_size``, ``stack_id``, ``restored_val_loss``, ``skipped_steps``, ``b_simple``,
``samples_per_s_per_rank``, ``timing_basis``, ``allreduce_calls``, ``allreduce_bytes``,
``allreduce_time_s``; steps ``b_simple``; probes ``repeat``, ``phase``, ``margin_pct``,
``vmdata_peak_bytes``. Version 4 adds probes ``stack_size``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

SCHEMA_VERSION = 4

TIMESTAMP = pa.timestamp("us", tz="UTC")


class RecordError(ValueError):
    """A row that does not fit its record: a programming error in the writer."""


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One row of ``trials``: a trial's configuration, outcome and measurements."""

    trial_key: str  # content hash of the configuration + seed
    sweep: str | None = None
    attempt: int | None = None  # sweeps: 1 for a key's first run, +1 per --retry-failed
    optuna_trial: int | None = None  # sweeps: the Optuna trial number that ran it
    # configuration
    workload: str | None = None
    mode: str | None = None  # sgd / mbgd / bgd
    samples: int | None = None  # training-set size
    micro_batch_size: int | None = None
    accumulation_steps: int | None = None
    effective_batch_size: int | None = None
    normalize: str | None = None
    partial_window: str | None = None
    drop_last: bool | None = None
    optimizer: str | None = None
    lr: float | None = None
    scheduler: str | None = None
    precision: str | None = None
    data_path: str | None = None
    seed: int | None = None
    # the model's layers whose output depends on the batching, found by inspecting it:
    # "BatchNorm2d×9,Dropout×2" ("" none, null not inspected; bench.workloads.batch_layers)
    batch_dependent_layers: str | None = None
    world_size: int | None = None  # data-parallel ranks (nproc); null: one process, no DDP
    sync: str | None = None  # DDP all-reduce: window (no_sync) / every micro-batch
    stack_size: int | None = None  # members trained together in one stacked run (bench.stack)
    stack_id: str | None = None  # the stacked run this trial was a member of
    # outcome
    status: str | None = None  # ok / oom / diverged / failed
    error: str | None = None
    stopped_early: bool | None = None
    epochs_run: int | None = None
    optimizer_steps: int | None = None
    micro_batches: int | None = None
    samples_seen: int | None = None
    tokens_seen: int | None = None
    data_sha256: str | None = None  # the workload's data (bench.workloads.base.data_sha256)
    final_loss: float | None = None  # the last optimizer step's loss
    tail_loss: float | None = None  # mean loss over the last TAIL_FRACTION of samples
    best_val_loss: float | None = None
    restored_val_loss: float | None = None  # restore_best: validation loss of the weights reloaded
    skipped_steps: int | None = None  # fp16: optimizer steps GradScaler skipped (inf/nan grads)
    b_simple: float | None = None  # gradient noise scale tr(Σ)/|G|² over the run, in loss units
    # time and throughput, over the steps after the timing warm-up
    train_time_s: float | None = None
    timed_steps: int | None = None
    samples_per_s: float | None = None
    steps_per_s: float | None = None
    tokens_per_s: float | None = None
    step_time_ms_median: float | None = None
    step_time_ms_iqr: float | None = None
    timing_noisy: bool | None = None  # IQR >= 10 % of the median
    samples_per_s_per_rank: float | None = None  # DDP: samples_per_s (all ranks) / world_size
    # "stack": time columns are the stacked run's time per member (stack_size); null: its own
    timing_basis: str | None = None
    # memory and energy
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    nvml_peak_used_bytes: int | None = None
    nvml_process_peak_bytes: int | None = None
    cpu_peak_rss_bytes: int | None = None
    energy_j: float | None = None
    # compute
    flops_per_sample: float | None = None  # counted training FLOPs of one sample
    flops_per_step: float | None = None
    flops_per_unit: float | None = None  # per unit of the loss (target token, else sample)
    peak_flops_per_s: float | None = None
    mfu: float | None = None  # model FLOPs utilisation, 0..1
    device: str | None = None
    env_id: str | None = None  # hash of the machine + software (bench.meters.env)
    # measurement detail (bench.meters): how a figure was obtained, baselines, counts
    planned_steps: int | None = None
    alloc_retries: int | None = None
    cuda_ooms: int | None = None
    nvml_baseline_used_bytes: int | None = None
    nvml_baseline_process_bytes: int | None = None
    nvml_memory_info: str | None = None
    nvml_samples: int | None = None
    cpu_baseline_rss_bytes: int | None = None
    cpu_rss_method: str | None = None
    energy_method: str | None = None
    energy_window_s: float | None = None
    energy_j_per_sample: float | None = None
    meter_interval_ms: float | None = None
    window_wall_s: float | None = None
    # DDP, counted by a communication hook on rank 0 (every rank makes the same calls)
    allreduce_calls: int | None = None  # gradient bucket all-reduces, the whole run
    allreduce_bytes: int | None = None  # bytes of those buckets (one rank's payload)
    allreduce_time_s: float | None = None  # launch to completion, summed; gloo only
    config_json: str | None = None  # TrialConfig.to_dict(), canonical JSON
    notes: str | None = None  # for a reader: what to know about these figures
    extra: str | None = None  # JSON object: detail outside the contract (extra_json)
    started_at: dt.datetime | None = None
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One row of ``steps``: one optimizer step of one trial."""

    trial_key: str
    epoch: int | None = None
    step: int | None = None  # global, from 1
    step_in_epoch: int | None = None
    micro_batches: int | None = None
    samples: int | None = None
    samples_seen: int | None = None
    tokens: int | None = None  # target tokens in the step (token workloads; null otherwise)
    loss: float | None = None  # the window's mean loss per sample (or per target token)
    lr: float | None = None
    grad_norm: float | None = None
    time_s: float | None = None  # training wall time at the end of this step
    val_loss: float | None = None
    b_simple: float | None = None  # gradient noise scale (EMA ratio); null when not sampled


@dataclass(frozen=True, kw_only=True)
class ProbeRecord:
    """One row of ``probes.parquet``: one ``bench oom`` probe (N steps at micro-batch b
    under a memory capacity) and what happened."""

    # identity
    probe_key: str  # hash of probe config + capacity + device: what reuse matches on
    search_key: str | None = None  # the same without b and k: one search's probes
    kind: str | None = None  # "boundary" (k=1), "throughput" (k = B / b), "ladder", "stack"
    trial_key: str | None = None
    workload: str | None = None
    precision: str | None = None
    device: str | None = None
    micro_batch_size: int | None = None
    accumulation_steps: int | None = None
    steps: int | None = None  # optimizer steps the probe was asked to run
    capacity_bytes: int | None = None  # 0: no cap (the device's own memory)
    cap_method: str | None = None
    cap_limit_bytes: int | None = None
    baseline_bytes: int | None = None  # CPU: VmData of the idle child; CUDA: the context
    repeat: int | None = None  # 0: the first run of this probe_key; i: its i-th repetition
    phase: str | None = None  # "search", "confirm", "margin", "model", "throughput"
    margin_pct: float | None = None  # the margin a "margin" probe's reduced cap applies
    # what happened
    outcome: str | None = None  # ok / oom / failed / diverged
    error: str | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    nvml_peak_used_bytes: int | None = None
    nvml_process_peak_bytes: int | None = None
    cpu_peak_rss_bytes: int | None = None
    child_rss_hwm_bytes: int | None = None  # the probe process's VmHWM (also when killed)
    child_max_allocated_bytes: int | None = None  # CUDA allocator lifetime peaks
    child_max_reserved_bytes: int | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    optimizer_steps: int | None = None
    wall_s: float | None = None  # the probe process's wall time, start to end
    started_at: dt.datetime | None = None
    config_json: str | None = None
    identity_json: str | None = None  # machine + software the probe ran on (in probe_key)
    killed: bool | None = None  # died by SIGKILL (twice under a cap): never reused
    vmdata_peak_bytes: int | None = None  # CPU: sampled peak of VmData, what RLIMIT_DATA counts
    stack_size: int | None = None  # kind "stack": members trained as one stack at micro_batch_size
    extra: str | None = None  # JSON object: detail outside the contract (extra_json)
    schema_version: int = SCHEMA_VERSION


Record = type[TrialRecord] | type[StepRecord] | type[ProbeRecord]

# Python annotation -> arrow type. Counts and bytes are int64, times UTC microseconds.
_ARROW = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    dt.datetime: TIMESTAMP,
}


def _arrow_type(annotation: Any) -> pa.DataType:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return _ARROW[base]


@functools.cache
def schema(record: Record) -> pa.Schema:
    """The arrow schema of ``record``'s table, in declaration order."""
    hints = typing.get_type_hints(record)
    return pa.schema(
        [pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(record)]
    )


def trial_schema() -> pa.Schema:
    return schema(TrialRecord)


def step_schema() -> pa.Schema:
    return schema(StepRecord)


def probe_schema() -> pa.Schema:
    return schema(ProbeRecord)


def columns(record: Record) -> dict[str, pa.DataType]:
    """Column name -> arrow type, in declaration order."""
    return {f.name: f.type for f in schema(record)}


def _defaults(record: Record) -> dict[str, Any]:
    """Declared defaults; a field without one (the key) is required."""
    return {
        f.name: (None if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(record)
    }


def _check_keys(record: Record, keys: Iterable[str]) -> None:
    undeclared = sorted(set(keys) - set(columns(record)))
    if undeclared:
        raise RecordError(
            f"{record.__name__} does not declare {', '.join(map(repr, undeclared))}: "
            f"declare the column in bench.records (and bump SCHEMA_VERSION) or put the "
            f"detail in 'extra'"
        )


def row(record: Record, values: Mapping[str, Any]) -> dict[str, Any]:
    """A complete row of ``record``'s table: every declared column in order, defaults
    for those ``values`` leaves out. An undeclared key raises RecordError."""
    _check_keys(record, values)
    try:
        built = record(**values)
    except TypeError as exc:  # a required field missing
        raise RecordError(f"{record.__name__}: {exc}") from None
    return {f.name: getattr(built, f.name) for f in dataclasses.fields(record)}


def trial_row(**values: Any) -> dict[str, Any]:
    return row(TrialRecord, values)


def probe_row(**values: Any) -> dict[str, Any]:
    return row(ProbeRecord, values)


def extra_json(detail: Mapping[str, Any]) -> str | None:
    """The ``extra`` column's value: canonical JSON of ``detail`` (None when empty)."""
    if not detail:
        return None
    return json.dumps(dict(detail), sort_keys=True, default=str)


def _is_null(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists: not a scalar null
        return False


def _utc(name: str, value: Any) -> dt.datetime | None:
    """A timestamp cell: an aware datetime or an ISO 8601 string with its offset."""
    if _is_null(value):
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise RecordError(f"column {name!r}: {value!r} is not an ISO 8601 time") from None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise RecordError(f"column {name!r}: {value!r} is not a time with its UTC offset")
    return value.astimezone(dt.UTC)


# What an inferred arrow type may be cast to each declared type from (safe casts only:
# 3.0 -> 3 passes, 3.5 -> int64 raises; a number never silently becomes a string).
_CASTABLE = {
    pa.int64(): lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    pa.float64(): lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    pa.bool_(): pa.types.is_boolean,
    pa.string(): lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    TIMESTAMP: pa.types.is_timestamp,
}


def _column(name: str, values: Any, typ: pa.DataType) -> pa.Array:
    if typ == TIMESTAMP:
        values = [_utc(name, v) for v in values]
    try:
        arr = pa.array(values, from_pandas=True)  # from_pandas: NaN and NaT are null
        if arr.type == typ:
            return arr
        if not (pa.types.is_null(arr.type) or _CASTABLE[typ](arr.type)):
            raise RecordError(f"column {name!r}: {arr.type} values where {typ} is declared")
        return arr.cast(typ, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise RecordError(f"column {name!r} ({typ}): {exc}") from None


def table(record: Record, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """``rows`` (dicts) as a table of exactly ``record``'s schema."""
    rows = [row(record, r) for r in rows]
    target = schema(record)
    arrays = [_column(f.name, [r[f.name] for r in rows], f.type) for f in target]
    return pa.Table.from_arrays(arrays, schema=target)


def columns_table(record: Record, data: pd.DataFrame | Mapping[str, Any]) -> pa.Table:
    """Column-wise data (a DataFrame or name -> array) as a table of ``record``'s
    schema: for long tables (steps), where a record per row would cost too much.
    Declared columns that ``data`` lacks are null, or their declared default."""
    names = list(data.columns if isinstance(data, pd.DataFrame) else data)
    _check_keys(record, names)
    n = len(data) if isinstance(data, pd.DataFrame) else len(next(iter(data.values()), []))
    defaults = _defaults(record)
    target = schema(record)
    arrays = []
    for f in target:
        if f.name in names:
            values = data[f.name]
            if len(values) != n:
                raise RecordError(f"column {f.name!r}: {len(values)} values, not {n}")
            arrays.append(_column(f.name, values, f.type))
        elif defaults[f.name] is not None:
            arrays.append(pa.array([defaults[f.name]] * n, f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=target)


def steps_frame(trial_key: str, steps) -> pd.DataFrame:
    """One trial's steps table (``StepRecord``'s columns, in order) from its step rows
    (``bench.train_record.StepColumns``)."""
    names = [f.name for f in dataclasses.fields(StepRecord)]
    data = {name: steps[name] for name in names[1:]}
    return pd.DataFrame({names[0]: pd.Series([trial_key] * len(steps), dtype="str"), **data})


def trials_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return table(TrialRecord, rows)


def steps_table(data: pd.DataFrame | Mapping[str, Any]) -> pa.Table:
    return columns_table(StepRecord, data)


def probes_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return table(ProbeRecord, rows)


def _upgrade_column(name: str, col: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    if col.type == typ:
        return col
    if typ == TIMESTAMP and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        # Version 1 wrote ISO 8601 text; a value that does not parse reads as null.
        parsed = pd.to_datetime(col.to_pandas(), utc=True, format="ISO8601", errors="coerce")
        return pa.chunked_array([pa.array(parsed, TIMESTAMP, from_pandas=True)])
    try:
        return col.cast(typ, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise RecordError(f"column {name!r}: {col.type} cannot be read as {typ}: {exc}") from None


def upgrade(data: pa.Table, record: Record, *, keep_extra: bool = False) -> pa.Table:
    """A table written by any schema version, as ``record``'s current schema: declared
    columns first, in order, with their types (absent ones null); columns the record
    does not declare follow when ``keep_extra``, else are dropped. A column whose
    values cannot be read as its declared type raises RecordError."""
    target = schema(record)
    if data.schema.remove_metadata().equals(target):
        return data.replace_schema_metadata(None)
    fields, arrays = [], []
    for f in target:
        fields.append(f)
        if f.name in data.column_names:
            arrays.append(_upgrade_column(f.name, data[f.name], f.type))
        else:
            arrays.append(pa.nulls(data.num_rows, f.type))
    if keep_extra:
        for f, col in zip(data.schema, data.columns, strict=True):
            if f.name not in target.names:
                fields.append(f.remove_metadata())
                arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _effective_batch(config) -> int | None:
    if config.batch_size is None:
        return None
    return config.batch_size * config.accumulation_steps


def config_columns(config) -> dict[str, Any]:
    """The trials columns a TrialConfig fills by itself, before a plan resolves its sizes
    (``bench.trial`` overrides those with the plan's). ``config`` is a TrialConfig."""
    return {
        "trial_key": config.trial_key,
        "workload": config.workload,
        "mode": config.mode,
        "samples": config.samples,
        "micro_batch_size": config.batch_size,
        "accumulation_steps": config.accumulation_steps,
        "effective_batch_size": _effective_batch(config),
        "normalize": config.normalize,
        "partial_window": config.partial_window,
        "drop_last": config.drop_last,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "scheduler": config.scheduler,
        "precision": config.precision,
        "data_path": config.data_path,
        "seed": config.seed,
        "world_size": config.nproc,
        "sync": None if config.nproc is None else config.sync,
        "config_json": json.dumps(config.to_dict(), sort_keys=True, default=str),
    }


def unreported_trial_row(config, *, status: str, error: str, sweep: str | None) -> dict:
    """The trials row of a trial whose process never reported (killed, timed out,
    crashed): its configuration, the status and error the caller decided, null for
    everything it did not live to measure. ``config`` is a TrialConfig."""
    return trial_row(
        **config_columns(config), sweep=sweep, status=status, error=error, started_at=now()
    )


def now() -> dt.datetime:
    """The current time as ``started_at`` holds it: UTC, whole microseconds."""
    return dt.datetime.now(dt.UTC)
