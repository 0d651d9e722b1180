"""The accumulation audit: where k micro-batches of b do not train like one batch of b·k.

With ``normalize = "sample"`` a window of k micro-batches has the gradient of the
window's mean loss, so (b, k) and (b·k, 1) train identically (to float rounding) for any
model whose output for a sample does not depend on the other samples of its batch. The
audit measures the models for which that fails (BatchNorm in training mode, two or more
dropout layers: ``bench.workloads.batch_layers``) against a yardstick: how far two seeds
of (b·k, 1) end apart.

Its input is a sweep spec (``experiments/accumulation-audit.toml``): every trial of it
is run in this process through the public training API (``bench.train.train``), so the
final parameters can be compared without storing them. Trials that differ only in
``batch_size``, ``accumulation_steps`` and ``seed`` form a *variant*; within a variant
each (b, k > 1) is paired with (b·k, 1) at the same seed (kind ``accumulation``), and
each (B, 1) with (B, 1) at the next seed of the spec (kind ``seed``). Per pair:

- ``param_distance_rel``: ‖θ_a − θ_b‖ / ‖θ_b‖ over all parameters at the end;
- ``buffer_distance_rel``: the same over floating buffers (BatchNorm's running
  statistics), null when the model has none;
- ``train_loss_diff_max`` / ``_final``: |loss_a − loss_b| of the steps' training losses,
  largest over steps and at the last step; ``val_loss_diff_*`` the same at evaluations.

Runs are meant in fp64 (``precision = "fp64"``), where rounding is ~1e-16 and any gap
above ~1e-12 is the model's, not the arithmetic's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.config import TrialConfig
from bench.errors import BenchError
from bench.train import train
from bench.trial import resolve_device
from bench.workloads import build_workload
from bench.workloads.batch_layers import describe

SPLIT_FIELDS = ("batch_size", "accumulation_steps", "seed")


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    """One compared pair: ``a`` against the reference ``b`` (b·k, 1)."""

    variant: str  # the workload and what sets this variant apart from the others
    workload: str
    batch_dependent_layers: str  # of the trained model (bench.workloads.batch_layers)
    kind: str  # "accumulation": (b, k) vs (b·k, 1), same seed; "seed": two seeds of (B, 1)
    micro_batch_size: int  # a's b (the reference's is b·k)
    accumulation_steps: int  # a's k
    effective_batch_size: int
    seed: int  # a's seed
    reference_seed: int
    precision: str
    optimizer_steps: int
    param_distance_rel: float
    buffer_distance_rel: float | None
    train_loss_diff_max: float
    train_loss_diff_mean: float  # over the steps: less at the mercy of one batch
    train_loss_diff_final: float
    val_loss_diff_max: float | None
    val_loss_diff_final: float | None


COLUMNS = tuple(f.name for f in dataclasses.fields(AuditRow))


@dataclass(frozen=True)
class RunResult:
    """What a pair comparison needs of one finished run."""

    params: torch.Tensor  # all parameters, flattened, float64
    buffers: torch.Tensor | None  # all floating buffers, flattened, float64
    losses: np.ndarray  # training loss per optimizer step
    val_losses: np.ndarray  # validation loss per step (NaN where none was taken)
    layers: str


def run_config(config: TrialConfig, workloads: dict | None = None) -> RunResult:
    """Train ``config`` in this process; ``workloads`` caches built data by workload."""
    cache = workloads if workloads is not None else {}
    key = (config.workload, repr(sorted(config.workload_options.items())), config.samples)
    if key not in cache:
        cache[key] = build_workload(
            config.workload, samples=config.samples, options=config.workload_options
        )
    workload = cache[key]
    model, outcome = train(
        config, workload, config.plan(workload.n_train), resolve_device(config.device)
    )
    if outcome.status != "ok":  # a diverged run has no end point to compare
        raise BenchError(f"audit: {config.trial_key} ended {outcome.status}: {outcome.error}")
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    return RunResult(
        params=flat(model.parameters()),
        buffers=flat(buffers) if buffers else None,
        losses=np.array(outcome.steps["loss"], dtype=float),
        val_losses=np.array([np.nan if v is None else v for v in outcome.steps["val_loss"]]),
        layers=describe(model),
    )


def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().to("cpu", torch.float64).reshape(-1) for t in tensors])


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (0 when both are 0)."""
    norm = float(b.norm())
    diff = float((a - b).norm())
    return diff / norm if norm else (0.0 if diff == 0 else math.inf)


def loss_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| step by step, over the steps both runs took (NaN where either has none)."""
    n = min(len(a), len(b))
    return np.abs(a[:n] - b[:n])


def _max_final(d: np.ndarray) -> tuple[float | None, float | None]:
    taken = d[~np.isnan(d)]
    return (float(taken.max()), float(taken[-1])) if len(taken) else (None, None)


def compare(a: RunResult, b: RunResult) -> dict[str, Any]:
    """The distances of one pair (``b`` the reference)."""
    train = loss_differences(a.losses, b.losses)
    train_max, train_final = _max_final(train)
    val_max, val_final = _max_final(loss_differences(a.val_losses, b.val_losses))
    buffers = None
    if a.buffers is not None and b.buffers is not None:
        buffers = relative_distance(a.buffers, b.buffers)
    return {
        "param_distance_rel": relative_distance(a.params, b.params),
        "buffer_distance_rel": buffers,
        "train_loss_diff_max": train_max,
        "train_loss_diff_mean": float(np.nanmean(train)) if len(train) else None,
        "train_loss_diff_final": train_final,
        "val_loss_diff_max": val_max,
        "val_loss_diff_final": val_final,
        "optimizer_steps": min(len(a.losses), len(b.losses)),
    }


# -- pairing ---------------------------------------------------------------------------


def variant_key(config: TrialConfig) -> str:
    """What a variant shares: the configuration without b, k and the seed."""
    d = config.to_dict()
    for name in SPLIT_FIELDS:
        d.pop(name)
    return repr(sorted(d.items()))


def variant_labels(configs: Sequence[TrialConfig]) -> dict[str, str]:
    """variant key -> "workload: what differs between that workload's variants"."""
    flats: dict[str, dict] = {}
    for c in configs:
        d = {k: v for k, v in c.to_dict().items() if k not in SPLIT_FIELDS}
        d.update(d.pop("workload_options"))
        flats[variant_key(c)] = d
    labels = {}
    for workload in {d["workload"] for d in flats.values()}:
        mine = {key: d for key, d in flats.items() if d["workload"] == workload}
        names = sorted({n for d in mine.values() for n in d} - {"workload"})
        varying = [n for n in names if len({repr(d.get(n)) for d in mine.values()}) > 1]
        for key, d in mine.items():
            shown = ", ".join(f"{n}={d.get(n)}" for n in varying)
            labels[key] = f"{workload}: {shown}" if shown else workload
    return labels


@dataclass(frozen=True)
class Pair:
    kind: str
    a: TrialConfig
    b: TrialConfig  # the reference


def pairs(configs: Sequence[TrialConfig]) -> tuple[list[Pair], list[str]]:
    """The accumulation and seed pairs of a spec's trials, and one line per (b, k) that
    has no (b·k, 1) at its seed to compare with."""
    refs = {(variant_key(c), c.batch_size, c.seed): c for c in configs if c.accumulation_steps == 1}
    out, missing = [], []
    for c in configs:
        if c.accumulation_steps > 1:
            ref = refs.get((variant_key(c), c.batch_size * c.accumulation_steps, c.seed))
            if ref is None:
                missing.append(
                    f"b={c.batch_size} k={c.accumulation_steps} seed={c.seed}: "
                    f"no b={c.batch_size * c.accumulation_steps} k=1 at that seed"
                )
            else:
                out.append(Pair("accumulation", c, ref))
    seeds = sorted({c.seed for c in configs})
    following = dict(zip(seeds, seeds[1:], strict=False))
    for (variant, b, seed), c in refs.items():
        other = refs.get((variant, b, following.get(seed)))
        if other is not None:
            out.append(Pair("seed", other, c))
    return out, missing


def audit(configs: Sequence[TrialConfig], progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every trial of the pairs once and compare them. Returns one row (``AuditRow``)
    per pair, and the pairs' loss differences step by step (``STEP_COLUMNS``)."""
    found, _ = pairs(configs)
    labels = variant_labels(configs)
    needed = {p.a.trial_key: p.a for p in found} | {p.b.trial_key: p.b for p in found}
    workloads: dict = {}
    runs = {}
    for i, (key, config) in enumerate(needed.items(), 1):
        runs[key] = run_config(config, workloads)
        if progress is not None:
            progress(i, len(needed), config)
    rows, steps = [], []
    for p in found:
        a, b = runs[p.a.trial_key], runs[p.b.trial_key]
        row = AuditRow(
            variant=labels[variant_key(p.a)],
            workload=p.a.workload,
            batch_dependent_layers=b.layers,
            kind=p.kind,
            micro_batch_size=p.a.batch_size,
            accumulation_steps=p.a.accumulation_steps,
            effective_batch_size=p.a.batch_size * p.a.accumulation_steps,
            seed=p.a.seed,
            reference_seed=p.b.seed,
            precision=p.a.precision,
            **compare(a, b),
        )
        rows.append(dataclasses.asdict(row))
        train_diff = loss_differences(a.losses, b.losses)
        val_diff = loss_differences(a.val_losses, b.val_losses)
        for step, (t, v) in enumerate(zip(train_diff, val_diff, strict=True), 1):
            steps.append((row.variant, row.kind, row.micro_batch_size, row.accumulation_steps,
                          row.seed, step, float(t), None if np.isnan(v) else float(v)))  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS)), pd.DataFrame(steps, columns=STEP_COLUMNS)


STEP_COLUMNS = [
    "variant", "kind", "micro_batch_size", "accumulation_steps", "seed", "step",
    "train_loss_abs_diff", "val_loss_abs_diff",
]  # fmt: skip


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per variant and (b, k): the accumulation gap next to the same distance
    between two seeds of (b·k, 1), medians over seeds, and the parameter gap over the
    seed distance (< 1: smaller than what another seed changes)."""
    acc = rows[rows["kind"] == "accumulation"]
    noise = rows[rows["kind"] == "seed"].groupby(["variant", "effective_batch_size"])
    measures = ["param_distance_rel", "train_loss_diff_mean", "val_loss_diff_final"]
    seeds = {m: noise[m].median() for m in measures}
    out = []
    group = ["variant", "batch_dependent_layers", "micro_batch_size", "accumulation_steps"]
    for (variant, layers, b, k), g in acc.groupby(group, sort=False):
        line = {"variant": variant, "batch_dependent_layers": layers, "b": b, "k": k}
        for m in measures:
            line[m] = g[m].median()
            line[f"seed_{m}"] = seeds[m].get((variant, b * k))
        noise_param = line["seed_param_distance_rel"]
        line["gap_over_noise"] = line["param_distance_rel"] / noise_param if noise_param else None
        line["seeds"] = len(g)
        out.append(line)
    return pd.DataFrame(out)


def summary_markdown(table: pd.DataFrame) -> str:
    """``summary`` as a markdown table (numbers to 2 significant digits)."""
    from bench.report.markdown import markdown_table

    def num(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2g}"

    headers = [
        "variant", "batch-dependent layers", "b", "k",
        "‖Δθ‖/‖θ‖: (b,k) vs (bk,1)", "two seeds of (bk,1)", "ratio",
        "mean |Δ train loss|", "two seeds", "final |Δ val loss|", "two seeds",
    ]  # fmt: skip
    rows = [
        [r.variant, r.batch_dependent_layers or "none", r.b, r.k,
         num(r.param_distance_rel), num(r.seed_param_distance_rel), num(r.gap_over_noise),
         num(r.train_loss_diff_mean), num(r.seed_train_loss_diff_mean),
         num(r.val_loss_diff_final), num(r.seed_val_loss_diff_final)]
        for r in table.itertuples()
    ]  # fmt: skip
    return markdown_table(headers, rows, ["l", "l"] + ["r"] * 9)
