"""``bench oom`` probes as the memory figure draws them: read, one row per probe, and
the boundary each search found."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import ProbeRecord
from bench.report.figures.axes import compact_bytes, plain


def load_oom_probes(folder: Path, notes: list[str]) -> pd.DataFrame | None:
    """Probes written by ``bench oom`` (rows of ``bench.records.ProbeRecord``):
    ``<folder>/probes.parquet``, ``<folder>/oom/*/probes.parquet`` and
    ``<folder>/../oom/*/probes.parquet``, each read as the current schema (older versions
    upgraded, absent columns null). The newest row per ``probe_key`` wins, as in bench
    oom's own reuse; rows without a micro-batch or an outcome are left out. A probes file
    that cannot be read is a note in the report, not an error: it is optional input."""
    from bench.errors import BenchError
    from bench.store import read_table

    paths = [
        folder / "probes.parquet",
        *sorted(folder.glob("oom/*/probes.parquet")),
        *sorted(folder.parent.glob("oom/*/probes.parquet")),
    ]
    frames = []
    for path in dict.fromkeys(p for p in paths if p.is_file()):
        try:
            rows = read_table(path, ProbeRecord).to_pylist()
        except BenchError:
            notes.append(f"OOM probes {path}: unreadable, skipped")
            continue
        df = _probe_frame(_newest_per_key([ProbeRecord(**r) for r in rows]))
        if not len(df):
            notes.append(f"OOM probes {path}: no probe with a micro-batch and an outcome")
            continue
        df["source"] = str(path)
        frames.append(df)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def probe_boundaries(p: pd.DataFrame) -> pd.DataFrame:
    """Per search (one ``bench oom`` search: same configuration, capacity, machine; see
    ``_probe_frame``): its label, capacity, the smallest micro-batch whose every run
    did not fit (``first_bad``, NaN if none), whether that was an OOM or a kill from
    outside (``bad_outcome``), the largest micro-batch below it whose every run was ok
    (``last_ok``), ``exact`` (they are adjacent: b* is known; else runs between them
    disagree, or were not made, and the two bound a band, as bench oom reports it), and
    ``margin_pct`` (a search under capacity x (1 - margin) for the safe batch, NaN for
    the boundary search)."""
    cols = ["search", "label", "group", "capacity_bytes", "first_bad", "bad_outcome", "last_ok"]
    cols += ["exact", "margin_pct"]
    rows = []
    for search, q in p.groupby("search", sort=False):
        cap = float(q["capacity_bytes"].fillna(0).iloc[0])
        # What tells searches apart in a reader's terms: capacity, precision, optimizer.
        group = [str(v) for col in ("precision", "optimizer") for v in pd.unique(q[col].dropna())]
        parts = [compact_bytes(cap) if cap > 0 else "device", *group]
        verdict = q.groupby("micro_batch_size")["outcome"].agg(
            lambda o: (
                "ok" if (o == "ok").all() else "bad" if o.isin(["oom", "killed"]).all() else "mixed"
            )
        )
        bad = q[q["micro_batch_size"].isin(verdict.index[verdict == "bad"])]
        bad = bad.sort_values("micro_batch_size")
        okb = pd.Series(verdict.index[verdict == "ok"], dtype=float)
        first_bad = float(bad["micro_batch_size"].iloc[0]) if len(bad) else np.nan
        below = okb[okb < first_bad] if len(bad) else okb
        last_ok = float(below.max()) if len(below) else np.nan
        margins = q["margin_pct"].dropna()
        rows.append(
            {
                "search": search,
                "label": " ".join(plain(x) for x in parts),
                "group": " ".join(plain(x) for x in group) or "-",
                "capacity_bytes": cap,
                "first_bad": first_bad,
                "bad_outcome": bad["outcome"].iloc[0] if len(bad) else None,
                "last_ok": last_ok,
                "exact": bool(first_bad - last_ok == 1) or not len(bad),
                "margin_pct": float(margins.iloc[0]) if len(margins) else np.nan,
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    # Searches that differ in something else (options, machine, code): tell them apart.
    twice = out["label"].duplicated(keep=False)
    out.loc[twice, "label"] += " [" + out.loc[twice, "search"].astype(str).str[:6] + "]"
    return out


def planner_choices(p: pd.DataFrame) -> pd.DataFrame:
    """Per capacity, the (b, k) ``bench oom --target-batch`` would choose: of its
    throughput probes (k = B / b) that ran ok under the capacity after the margin, the
    fastest, by the median of its timing runs without a cap where those exist (the
    planner times without the cap and runs its pick under it), else by its own speed.
    Columns: capacity_bytes, micro_batch_size, accumulation_steps, samples_per_s, group
    (precision and optimizer)."""
    cols = ["capacity_bytes", "micro_batch_size", "accumulation_steps", "samples_per_s", "group"]
    t = p[(p["kind"] == "throughput") & (p["outcome"] == "ok") & p["samples_per_s"].notna()]
    free = t[t["capacity_bytes"].fillna(0) == 0]
    uncapped = free.groupby(["micro_batch_size", "accumulation_steps", "precision"], dropna=False)
    speed = uncapped["samples_per_s"].median().to_dict()
    t = t[t["capacity_bytes"].fillna(0) > 0].copy()
    t["samples_per_s"] = [
        speed.get((r.micro_batch_size, r.accumulation_steps, r.precision), r.samples_per_s)
        for r in t.itertuples()
    ]
    rows = []
    for _, q in t.groupby(["capacity_bytes", "precision", "optimizer"], dropna=False):
        best = q.loc[q["samples_per_s"].astype(float).idxmax()]
        group = [str(v) for v in (best["precision"], best["optimizer"]) if isinstance(v, str)]
        rows.append(
            {
                "capacity_bytes": float(best["capacity_bytes"]),
                "micro_batch_size": float(best["micro_batch_size"]),
                "accumulation_steps": float(best["accumulation_steps"]),
                "samples_per_s": float(best["samples_per_s"]),
                "group": " ".join(plain(x) for x in group) or "-",
            }
        )
    return pd.DataFrame(rows, columns=cols)


def _newest_per_key(probes: list[ProbeRecord]) -> list[ProbeRecord]:
    """A probe measured again (--fresh, or after a kill) supersedes its older rows; its
    confirmation runs (``repeat`` 1, 2, ...) are rows of their own, as in bench oom."""
    last = {(p.probe_key, p.repeat or 0): i for i, p in enumerate(probes) if p.probe_key}
    return [
        p for i, p in enumerate(probes) if not p.probe_key or last[p.probe_key, p.repeat or 0] == i
    ]


def _probe_frame(probes: list[ProbeRecord]) -> pd.DataFrame:
    """One row per drawable probe: micro-batch, outcome ("killed" where SIGKILL from
    outside the cap ended it), capacity (0 = no cap), peak, and the search it belongs to
    (``search_key``, else workload + precision + capacity)."""
    cols = ["micro_batch_size", "outcome", "capacity_bytes", "peak_bytes"]
    cols += ["workload", "precision", "optimizer", "search", "kind", "accumulation_steps"]
    cols += ["samples_per_s", "margin_pct"]
    rows = []
    for p in probes:
        if not p.micro_batch_size or p.micro_batch_size <= 0 or p.outcome is None:
            continue
        if p.kind in ("ladder", "stack"):  # the memory model's points (run after others
            continue  # in one process), and stacks' sizes: no micro-batch boundary
        precision = p.precision or _config_value(p, "precision")
        cap = p.capacity_bytes
        rows.append(
            {
                "micro_batch_size": p.micro_batch_size,
                "outcome": "killed" if p.killed else p.outcome,
                "capacity_bytes": np.nan if cap is None else cap,
                "peak_bytes": _probe_peak(p),
                "workload": p.workload,
                "precision": precision,
                "optimizer": _config_value(p, "optimizer"),
                "search": p.search_key or f"{p.workload}|{precision}|{cap or 0}",
                "kind": p.kind,
                "accumulation_steps": p.accumulation_steps,
                "samples_per_s": p.samples_per_s,
                "margin_pct": p.margin_pct,
            }
        )
    df = pd.DataFrame(rows, columns=cols)
    for c in (
        "micro_batch_size",
        "capacity_bytes",
        "peak_bytes",
        "accumulation_steps",
        "samples_per_s",
        "margin_pct",
    ):
        df[c] = pd.to_numeric(df[c]).astype(float)
    return df


def _probe_peak(p: ProbeRecord) -> float:
    """bench oom's own peak, the one its search compares with the capacity (on CUDA the
    context is added to the allocator's reserved peak, as the capacity includes it);
    for a row without a device, the first measured of its peaks."""
    if p.device is not None:
        from bench.oom import peak_bytes

        value = peak_bytes(dataclasses.asdict(p))
    else:
        candidates = (
            p.peak_reserved_bytes,
            p.peak_allocated_bytes,
            p.nvml_peak_used_bytes,
            p.cpu_peak_rss_bytes,
            p.child_rss_hwm_bytes,
        )
        value = next((v for v in candidates if v is not None), None)
    return np.nan if value is None else float(value)


def _config_value(p: ProbeRecord, key: str):
    """``key`` of the probe's ``config_json`` (None when absent or unreadable)."""
    try:
        config = json.loads(p.config_json) if p.config_json else None
    except json.JSONDecodeError:
        return None
    return config.get(key) if isinstance(config, dict) else None
