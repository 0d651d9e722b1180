"""Which hardware each trial ran on, so that a report never pools throughput or memory
across different machines.

``env_id`` cannot say it: it hashes the whole environment record (``bench.meters.env``),
the hashed hostname and the commit included, so two identical hosts of one sweep have two
ids. The hardware is read from the row's ``device`` (the GPU's name on CUDA, ``cpu``
otherwise) and, for CPU trials, the environment record's CPU model and usable cores
(``<folder>/env/<env_id>.json``). Software that differs between trials of one kind of
hardware (torch, Python, the commit) is named in a note, not split on: it is what a
regression hunt compares, and the report's tables stay whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.store import Results

# Software fields of the environment record that change what a trial measures.
SOFTWARE = ("python", "torch", "torch_cuda", "nvidia_driver", "commit")


@dataclass
class Part:
    """The trials of one kind of hardware."""

    hardware: str  # "NVIDIA H100 80GB HBM3", "CPU AMD EPYC (2 cores)", "cpu"
    results: Results | None
    notes: tuple[str, ...] = ()
    trials: int = 0  # how many

    def __post_init__(self) -> None:
        self.trials = len(self.results.trials) if self.results is not None else 0

    def take(self) -> Results:
        """The results, no longer held here: the report drops the full steps table once
        it has prepared its lean copy, which only works if nothing else holds it."""
        results, self.results = self.results, None
        if results is None:
            raise RuntimeError("Part.take() called twice")
        return results

    @property
    def slug(self) -> str:
        """A folder name for this part's report."""
        return re.sub(r"[^a-z0-9]+", "-", self.hardware.lower()).strip("-") or "unknown"


def env_records(folders: Iterable[Path]) -> dict[str, dict]:
    """env_id -> environment record, from every folder's ``env/*.json``."""
    found: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(Path(folder, "env").glob("*.json")):
            try:
                env = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(env, dict):
                found.setdefault(str(env.get("env_id") or path.stem), env)
    return found


def hardware_labels(trials: pd.DataFrame, envs: dict[str, dict]) -> pd.Series:
    """Per trial, the hardware it ran on; None where the row names no device (a trial
    that failed before it measured anything). CPU trials are told apart by CPU model
    and cores only when every CPU trial's environment record is there: otherwise one
    record missing would split identical machines."""
    device = trials["device"].astype(object).where(trials["device"].notna(), None)
    env = trials["env_id"].map(lambda e: envs.get(e) if isinstance(e, str) else None)
    cpu = device == "cpu"
    detailed = bool(cpu.any()) and bool(env[cpu].notna().all())

    def label(d: object, e: dict | None) -> str | None:
        if d is None:
            return None
        if d == "cpu" and detailed and e is not None:
            cores = e.get("cpu_usable_cores") or e.get("cpu_count")
            return f"CPU {e.get('cpu_model') or 'unknown model'} ({cores} cores)"
        return str(d)

    return pd.Series([label(d, e) for d, e in zip(device, env, strict=True)], index=trials.index)


def split_by_hardware(results: Results, folders: Iterable[Path]) -> list[Part]:
    """One part per kind of hardware, largest first; rows without a device join the
    largest part. One part (the whole results) when they all ran on one kind."""
    envs = env_records(folders)
    trials = results.trials
    labels = hardware_labels(trials, envs)
    kinds = labels.dropna().value_counts()
    if len(kinds) <= 1:
        name = kinds.index[0] if len(kinds) else "unknown"
        return [Part(name, results, _software_notes(trials, envs))]
    labels = labels.fillna(kinds.index[0])
    parts = []
    for name in kinds.index:
        rows = trials[labels == name].reset_index(drop=True)
        steps = results.steps[results.steps["trial_key"].isin(set(rows["trial_key"]))]
        part = Results(trials=rows, steps=steps.reset_index(drop=True))
        parts.append(Part(str(name), part, _software_notes(rows, envs)))
    return parts


def _software_notes(trials: pd.DataFrame, envs: dict[str, dict]) -> tuple[str, ...]:
    """A note naming the software that differs between the trials' environments."""
    seen: dict[str, set[str]] = {k: set() for k in SOFTWARE}
    for env_id in trials["env_id"].dropna().unique():
        env = envs.get(env_id)
        if env is None:
            continue
        for name, value in _software(env).items():
            seen[name].add(value)
    differ = {k: v for k, v in seen.items() if len(v) > 1}
    if not differ:
        return ()
    text = "; ".join(f"{k} {' / '.join(sorted(v))}" for k, v in differ.items())
    return (
        f"the trials ran under different software ({text}): a throughput difference between "
        "configurations may come from it (env/<env_id>.json has each trial's environment)",
    )


def _software(env: dict) -> dict[str, str]:
    commit = str(env.get("git_commit") or "no-git")[:10] + (
        "+dirty" if env.get("git_dirty") else ""
    )
    return {
        "python": str(env.get("python")),
        "torch": str((env.get("packages") or {}).get("torch")),
        "torch_cuda": str(env.get("torch_cuda")),
        "nvidia_driver": str(env.get("nvidia_driver")),
        "commit": commit,
    }
