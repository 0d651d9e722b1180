"""Configuration families: configurations alike in everything but the batch shape.

A line across micro-batch sizes joins the configurations of one family, so that it never
pools configurations that differ in something else (the tensor and the DataLoader path,
N = 100 and N = 10000 samples) into one median.
"""

from __future__ import annotations

import re

import pandas as pd

# Longer family names are cut, after the ids of their configurations (which keep them
# apart, and which the legend table spells out in full).
MAX_NAME = 60


def families(prep, cids: list[str], along: str = "micro_batch_size") -> dict[str, str]:
    """Per config id (of one workload), its family for a line along ``along`` (the
    micro-batch b or the effective batch B): the batch size a line holds fixed where it
    varies, and each other setting that varies between these configurations, as
    ``key=value`` ('k=4 data_path=tensor samples=10000'); 'all configurations' when
    nothing does. Along b a line holds k fixed, or B where B takes fewer values than k
    (an accumulation sweep: one B split as (b, k) several ways is one line across b,
    not one point per k); along B it holds k fixed."""
    settings = prep.settings.loc[cids].drop(columns=["workload"], errors="ignore")
    varying = [c for c in settings.columns if settings[c].nunique() > 1]
    configs = prep.configs.set_index("config_id").loc[cids]
    k, big_b = configs["accumulation_steps"], configs["effective_batch_size"]
    kinds = k.nunique(dropna=False)
    by_b = along == "micro_batch_size" and kinds > 1 and big_b.nunique(dropna=False) < kinds
    fixed, symbol = (big_b, "B") if by_b else (k, "k")
    show = by_b or kinds > 1
    out = {}
    for cid in cids:
        value = f"{int(fixed[cid])}" if pd.notna(fixed[cid]) else "?"
        parts = [f"{symbol}={value}"] if show else []
        parts += [f"{c}={settings.at[cid, c] or '-'}" for c in varying]
        out[cid] = " ".join(parts) or "all configurations"
    if max(map(len, out.values()), default=0) <= MAX_NAME:
        return out
    tags = prep.configs.set_index("config_id")["config_tag"]
    members: dict[str, list[str]] = {}
    for cid, name in out.items():
        members.setdefault(name, []).append(str(tags[cid]))
    return {cid: _cut(f"{' '.join(members[name])}: {name}") for cid, name in out.items()}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def family_order(names) -> list[str]:
    """Family names in reading order: numbers as numbers (k=2 before k=16, lr=0.01
    before lr=0.1)."""

    def key(name: str) -> list:
        # re.split with a group: text at even places, numbers at odd ones.
        return [float(t) if i % 2 else t for i, t in enumerate(NUMBER.split(name))]

    return sorted(set(names), key=key)
