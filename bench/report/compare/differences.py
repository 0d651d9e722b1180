"""What makes two results folders not like for like: another device, torch or CUDA,
other training data, or no trial in common. Said as warnings, never as verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.report.compare.sides import Side, one_side_keys
from bench.report.prepare import Prepared

# Environment identity: the keys of trials rows / env records that must match for timing
# and memory numbers to be comparable.
ENV_FIELDS = {
    "device": ("device", "cuda_devices", "device_name", "gpu_name", "cuda_device_name"),
    "cpu": ("cpu_model",),
    "torch": (
        "torch_version",
        "torch",
        "torch.version",
        "torch.__version__",
        "versions.torch",
        "software.torch",
        "packages.torch",
    ),
    "cuda": ("torch_cuda", "cuda_version", "torch.cuda", "versions.cuda", "software.cuda"),
}


def caveats(baseline: str | Path, candidate: str | Path, b: Side, c: Side) -> list[str]:
    """The warnings for comparing ``b`` (loaded from ``baseline``) with ``c``."""
    base, cand = b.prep, c.prep
    out = []
    env_b, env_c = environment(Path(baseline), base), environment(Path(candidate), cand)
    for name in ENV_FIELDS:
        if env_b[name] and env_c[name] and env_b[name] != env_c[name]:
            out.append(
                f"environments differ — {name} differs: baseline "
                f"{', '.join(sorted(env_b[name]))} vs candidate {', '.join(sorted(env_c[name]))}"
            )
    changed, common = data_changed(base.trials, cand.trials)
    if changed:
        out.append(
            f"training data differ for {changed} of {common} trials in common "
            "(data_sha256: same configuration and seed, other data, e.g. a workload's data "
            "generation changed): their losses are not like for like"
        )
    if not set(base.trials["trial_key"]) & set(cand.trials["trial_key"]):
        out.append(_no_common_trial_key(b, c))
    basis_b, basis_c = timing_bases(base.trials), timing_bases(cand.trials)
    if basis_b != basis_c:
        out.append(
            f"throughput not like for like — baseline ran {', '.join(sorted(basis_b))}, "
            f"candidate {', '.join(sorted(basis_c))}: a stacked member's time columns are "
            "its stack's time per member (timing_basis = 'stack')"
        )
    return out


def timing_bases(trials: pd.DataFrame) -> set[str]:
    """How a side's time columns were measured: 'solo' (null timing_basis) and/or 'stack'."""
    if "timing_basis" not in trials.columns:
        return {"solo"}
    return set(trials["timing_basis"].fillna("solo").astype(str))


def _no_common_trial_key(b: Side, c: Side) -> str:
    seeds_b, seeds_c = set(b.prep.trials["seed"].dropna()), set(c.prep.trials["seed"].dropna())
    reasons = ["different seeds"] if not seeds_b & seeds_c else []
    one_side = one_side_keys(b, c)
    if one_side:
        reasons.append(f"config keys on one side only: {one_side}")
    # Same configurations and seeds but other keys: keys at their default came or went.
    why = "; ".join(reasons) or "config keys at their default added or removed"
    return (
        f"no trial_key in common ({why}); configurations matched without their seed "
        "and without keys at their TrialConfig default"
    )


def data_changed(b: pd.DataFrame, c: pd.DataFrame) -> tuple[int, int]:
    """(trials whose data_sha256 differs, trials compared): matched on configuration and
    seed; results written before the column existed are not compared."""
    cols = ["config_id", "seed", "data_sha256"]
    if "data_sha256" not in b.columns or "data_sha256" not in c.columns:
        return 0, 0
    sides = [t[cols].dropna().drop_duplicates(["config_id", "seed"], keep="last") for t in (b, c)]
    m = sides[0].merge(sides[1], on=["config_id", "seed"], suffixes=("_b", "_c"))
    return int((m["data_sha256_b"] != m["data_sha256_c"]).sum()), len(m)


def environment(folder: Path, prep: Prepared) -> dict[str, set[str]]:
    """What device / torch / CUDA produced these results: from trials columns (``device``,
    ``torch_version`` where present) and from env records ``<folder>/env/*.json``."""
    env: dict[str, set[str]] = {k: set() for k in ENV_FIELDS}
    t = prep.trials
    for name, keys in ENV_FIELDS.items():
        for k in keys:
            if k in t.columns:
                env[name] |= {str(v) for v in t[k].dropna()}
    for path in sorted((folder / "env").glob("*.json")):
        try:
            flat = _flatten(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
        for name, keys in ENV_FIELDS.items():
            for k in keys:
                if k in flat and flat[k] not in (None, "", []):
                    env[name].add(_env_text(flat[k]))
                    break
    return env


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".lower()
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _env_text(value: object) -> str:
    """A list of devices (e.g. ``cuda_devices: [{"name": ...}, ...]``) as their names."""
    if isinstance(value, list):
        return ", ".join(str(v.get("name", v)) if isinstance(v, dict) else str(v) for v in value)
    return str(value)
