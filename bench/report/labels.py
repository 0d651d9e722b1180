"""How configurations are named for a reader.

Three names per configuration (a trial's configuration without its seed):

- the *label*: the batch shape and every key whose value varies across the results
  (``mbgd B=32 (8×4) data_path=tensor epochs=5 samples=10000``): unique, and what
  ``bench compare`` prints;
- the *tag*: ``C1``, ``C2``, … in the report's order (workload, B, b), short enough for a
  legend entry or a point's annotation;
- the *short label*: the tag, the batch shape, and only the keys that tell apart the
  configurations of one workload that share that shape (``C4 mbgd B=32 (32×1)
  data_path=dataloader``). Figures and tables use it; the legend table maps each tag to
  every key that varies in the report.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

# Keys that never distinguish configurations in a label: the seed (a repeat), and the
# batch shape, which the shape text already says.
SHAPE_KEYS = frozenset(
    {"seed", "mode", "batch_size", "accumulation_steps", "micro_batch_size", "effective_batch_size"}
)


def format_setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={format_setting(x)}" for k, x in sorted(v.items()))
    return str(v)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """workload_options (a nested table) flattened so each option can vary on its own."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


def _int_or_none(v: Any) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def shape_text(mode: Any, b: Any, k: Any, big_b: Any) -> str:
    """``mbgd B=32 (8×4)``: the mode, the effective batch and micro-batch × accumulation."""
    b, k, big_b = _int_or_none(b), _int_or_none(k), _int_or_none(big_b)
    if big_b is None and b is not None and k is not None:
        big_b = b * k
    parts = [str(mode) if isinstance(mode, str) and mode else "?"]
    if big_b is not None:
        parts.append(f"B={big_b}" + (f" ({b}×{k})" if b is not None and k is not None else ""))
    return " ".join(parts)


def varying_keys(flat: list[dict[str, Any]], skip: frozenset[str] = SHAPE_KEYS) -> list[str]:
    """The keys (sorted) whose value is not the same in every one of ``flat``; a key
    missing from some counts as a value of its own."""
    keys = sorted({k for f in flat for k in f} - skip)
    return [
        k
        for k in keys
        if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1
    ]


def settings_text(flat: dict[str, Any], keys: list[str]) -> list[str]:
    return [f"{k}={format_setting(flat[k])}" for k in keys if k in flat]


def full_labels(shapes: dict[str, str], flat: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per config id: its shape and the keys varying across all of ``flat``; the id
    appended where two configurations would still print alike."""
    varying = varying_keys(list(flat.values()))
    labels = {cid: " ".join([shapes[cid], *settings_text(f, varying)]) for cid, f in flat.items()}
    return _unique(labels)


def short_labels(
    order: list[str], shapes: dict[str, str], flat: dict[str, dict[str, Any]], workload: dict
) -> tuple[dict[str, str], dict[str, str]]:
    """(tags, short labels) per config id; ``order`` is the report's order of the ids,
    ``workload`` maps an id to its workload."""
    tags = {cid: f"C{i + 1}" for i, cid in enumerate(order)}
    groups: dict[tuple, list[str]] = {}
    for cid in order:
        groups.setdefault((str(workload[cid]), shapes[cid]), []).append(cid)
    short = {}
    for (_, shape), cids in groups.items():
        keys = varying_keys([flat[c] for c in cids])
        for cid in cids:
            short[cid] = " ".join([tags[cid], shape, *settings_text(flat[cid], keys)])
    return tags, short


def _unique(labels: dict[str, str]) -> dict[str, str]:
    seen: dict[str, int] = {}
    for lab in labels.values():
        seen[lab] = seen.get(lab, 0) + 1
    return {cid: (lab if seen[lab] == 1 else f"{lab} [{cid[:6]}]") for cid, lab in labels.items()}


def settings_table(order: list[str], flat: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per config id (in ``order``), one column per key that is not a batch-shape
    key, values as text ('' where a configuration lacks the key)."""
    keys = sorted({k for f in flat.values() for k in f} - SHAPE_KEYS)
    rows = [{k: format_setting(flat[c][k]) if k in flat[c] else "" for k in keys} for c in order]
    return pd.DataFrame(rows, index=pd.Index(order, name="config_id"), columns=keys)
