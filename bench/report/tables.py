"""Per-configuration summary (with its Pareto flag), the rows of the report's tables, and the
legend table that maps configuration ids to their settings.

Every number is a median over a configuration's seeds (its repeats) with the min–max
spread beside it; metrics come from ok trials only, status counts from all of them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# markdown_table and md_cell are importable from here too, where the report's rows are.
from bench.report.markdown import markdown_table, md_cell  # noqa: F401
from bench.report.metrics import format_value
from bench.report.pareto import pareto_mask
from bench.report.prepare import STATUSES, Prepared

SUMMARY_METRICS = (
    ("samples_per_s", ""),
    ("step_time_ms_median", ""),
    ("trial_memory_bytes", "bytes"),
    ("tail_loss", ""),
)


def config_summary(
    prep: Prepared, points: pd.DataFrame | None = None, tolerance: dict | None = None
) -> pd.DataFrame:
    """One row per configuration (order of ``prep.configs``); ``tolerance`` as from
    ``pareto.tolerances`` decides what counts as a tie on the Pareto front."""
    t = prep.trials
    rows = []
    for _, c in prep.configs.iterrows():
        g = t[t["config_id"] == c["config_id"]]
        ok = g[g["status"] == "ok"]
        row = {k: c[k] for k in prep.configs.columns}
        row["seeds"] = len(g)
        counts = g["status"].value_counts()
        for s in STATUSES:
            row[s] = int(counts.get(s, 0))
        row["other_status"] = int(len(g) - sum(row[s] for s in STATUSES))
        for m, _ in SUMMARY_METRICS:
            v = ok[m].dropna().to_numpy(dtype=float)
            row[m] = float(np.median(v)) if len(v) else np.nan
            row[f"{m}_lo"] = float(v.min()) if len(v) else np.nan
            row[f"{m}_hi"] = float(v.max()) if len(v) else np.nan
            row[f"{m}_n"] = len(v)
        src = ok["trial_memory_source"].dropna()
        row["trial_memory_source"] = src.mode().iloc[0] if len(src) else None
        row["device"] = ", ".join(sorted({str(d) for d in g["device"].dropna()})) or None
        rows.append(row)
    summary = pd.DataFrame(rows)
    for col in ("steps_to_target", "samples_to_target", "time_to_target_s"):
        summary[col] = np.nan
    summary["seeds_reached"] = 0
    summary["seeds_ran"] = 0
    if points is not None and len(points):
        p = points.set_index("config_id")
        for col in ("steps_to_target", "samples_to_target", "time_to_target_s"):
            summary[col] = summary["config_id"].map(p[col])
        summary["seeds_reached"] = (
            summary["config_id"].map(p["seeds_reached"]).fillna(0).astype(int)
        )
        summary["seeds_ran"] = summary["config_id"].map(p["seeds"]).fillna(0).astype(int)
    summary["pareto"] = pareto_mask(summary, tolerance)
    return summary


def spread(row: pd.Series, m: str, unit: str = "") -> str:
    v, lo, hi, n = row[m], row[f"{m}_lo"], row[f"{m}_hi"], row[f"{m}_n"]
    if not n:
        return "-"
    text = format_value(v, unit)
    if n > 1 and lo != hi:
        text += f" ({format_value(lo, unit)}–{format_value(hi, unit)})"
    return text


def status_text(row: pd.Series) -> str:
    parts = [f"{s} {row[s]}" for s in STATUSES if row[s]]
    if row.get("other_status"):
        parts.append(f"other {row['other_status']}")
    return ", ".join(parts) or "-"


def reach_text(row: pd.Series, col: str, unit: str = "") -> str:
    ran, reached = int(row["seeds_ran"]), int(row["seeds_reached"])
    if not ran:
        return "-"
    v = row[col]
    if not (isinstance(v, float) and math.isfinite(v)):
        return f"not reached ({reached}/{ran})" if reached else "not reached"
    text = f"{v:,.0f}" if unit == "steps" else format_value(v, unit)
    return text if reached == ran else f"{text} ({reached}/{ran})"


CONFIG_HEADERS = [
    "configuration",
    "workload",
    "seeds",
    "status",
    "samples/s",
    "step time (ms)",
    "memory",
    "tail loss",
    "steps to target",
    "time to target (s)",
    "Pareto",
]
CONFIG_ALIGN = ["l", "l", "r", "l", "r", "r", "r", "r", "r", "r", "c"]


def config_rows(summary: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, r in summary.iterrows():
        rows.append(
            [
                r["config_short"],
                r["workload"] if isinstance(r["workload"], str) else "-",
                str(int(r["seeds"])),
                status_text(r),
                spread(r, "samples_per_s"),
                spread(r, "step_time_ms_median"),
                spread(r, "trial_memory_bytes", "bytes"),
                spread(r, "tail_loss"),
                reach_text(r, "steps_to_target", "steps"),
                reach_text(r, "time_to_target_s"),
                "★" if r["pareto"] else "",
            ]
        )
    return rows


def pareto_rows(summary: pd.DataFrame) -> list[list[str]]:
    # Grouped by workload: each workload has its own front.
    front = summary[summary["pareto"]].sort_values(
        ["workload", "samples_per_s"], ascending=[True, False]
    )
    return [
        [
            r["config_short"],
            r["workload"] if isinstance(r["workload"], str) else "-",
            format_value(r["samples_per_s"]),
            format_value(r["trial_memory_bytes"], "bytes"),
            format_value(r["tail_loss"]),
        ]
        for _, r in front.iterrows()
    ]


PARETO_HEADERS = ["configuration", "workload", "samples/s", "memory", "tail loss"]
PARETO_ALIGN = ["l", "l", "r", "r", "r"]


def legend(prep: Prepared) -> tuple[list[str], list[list[str]], list[str], list[str]]:
    """The table that maps each tag to its full configuration: (headers, rows, align, and
    the settings every configuration shares as ``key=value``). Columns: tag, workload,
    the batch shape, then one per key whose value differs between configurations."""
    settings = prep.settings.drop(columns=["workload"], errors="ignore")
    varying = [k for k in settings.columns if settings[k].nunique() > 1]
    shared = [
        f"{k}={settings[k].iloc[0]}"
        for k in settings.columns
        if k not in varying and len(settings) and settings[k].iloc[0] != ""
    ]
    headers = ["id", "workload", "mode", "b", "k", "B", *varying]
    rows = []
    for _, c in prep.configs.iterrows():
        shape = [_count(c["micro_batch_size"]), _count(c["accumulation_steps"])]
        rows.append(
            [
                c["config_tag"],
                c["workload"] if isinstance(c["workload"], str) else "-",
                c["mode"] if isinstance(c["mode"], str) else "-",
                *shape,
                _count(c["effective_batch_size"]),
                *(settings.at[c["config_id"], k] or "-" for k in varying),
            ]
        )
    align = ["l", "l", "l", "r", "r", "r", *["l"] * len(varying)]
    return headers, rows, align, shared


def _count(v: object) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return f"{f:.0f}" if math.isfinite(f) else "-"
