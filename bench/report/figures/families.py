"""Configuration families: configurations alike in everything but the batch shape.

A line across micro-batch sizes joins the configurations of one family, so that it never
pools configurations that differ in something else (the tensor and the DataLoader path,
N = 100 and N = 10000 samples) into one median.
"""

from __future__ import annotations

import pandas as pd

# Longer family names are cut, after the ids of their configurations (which keep them
# apart, and which the legend table spells out in full).
MAX_NAME = 60


def families(prep, cids: list[str]) -> dict[str, str]:
    """Per config id (of one workload), its family: the accumulation k where k varies,
    and each setting that varies between these configurations, as ``key=value``
    ('k=4 data_path=tensor samples=10000'); 'all configurations' when nothing does."""
    settings = prep.settings.loc[cids].drop(columns=["workload"], errors="ignore")
    varying = [c for c in settings.columns if settings[c].nunique() > 1]
    k = prep.configs.set_index("config_id").loc[cids, "accumulation_steps"]
    show_k = k.nunique(dropna=False) > 1
    out = {}
    for cid in cids:
        parts = [f"k={int(k[cid])}" if pd.notna(k[cid]) else "k=?"] if show_k else []
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
