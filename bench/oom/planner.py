"""The planner: for a target batch B, the fastest split b x k = B that fits.

Only divisors b of B are candidates (no short final micro-batch), and only those at or
below the boundary after the margin. Each candidate is measured once, under the
tightest capacity it fits after the margin, and the fastest per capacity is recommended.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.oom.capacity import CapacityResult
from bench.oom.prober import Prober, peak_bytes


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def plan(
    results: list[CapacityResult],
    *,
    target: int,
    candidates: int,
    throughput_steps: int,
    make_prober: Callable[[int | None], Prober],
) -> None:
    """Set each result's ``plan``: throughput of (b, B / b) for the ``candidates``
    largest divisors b of B that fit. ``make_prober(cap)`` gives a throughput prober
    under ``cap`` (None: no cap); ``results`` ascend in capacity, tightest first."""
    measured: dict[int, dict] = {}
    for result in results:
        fitting = [d for d in divisors(target) if d <= result.safe_batch][-candidates:]
        prober = make_prober(_measuring_capacity(result))
        for b in fitting:
            if b not in measured:
                # No evaluation: its time is excluded from throughput anyway, and the
                # boundary probes already showed that b fits with it.
                measured[b] = prober.run(
                    b, target // b, steps=2 + throughput_steps, timing_warmup=2, evaluate=False
                )
        rows = [_candidate(b, target // b, measured[b]) for b in fitting]
        result.plan = {
            "target_batch": target,
            "candidates": rows,
            "recommended": _recommend(rows, result.capacity_bytes),
            "note": "b divides B exactly (no short final micro-batch); candidates are the largest "
            f"{candidates} divisors of {target} at or below the boundary after the margin",
        }


def _measuring_capacity(result: CapacityResult) -> int | None:
    """Where the safe batch was verified: under capacity x (1 - margin), or with no
    margin under the capacity itself (none for the device's own memory)."""
    if result.margin_capacity_bytes is not None:
        return result.margin_capacity_bytes
    return result.capacity_bytes if result.capped else None


def _candidate(b: int, k: int, row: dict) -> dict:
    return {
        "micro_batch_size": b,
        "accumulation_steps": k,
        "outcome": row["outcome"],
        "samples_per_s": row["samples_per_s"],
        "tokens_per_s": row["tokens_per_s"],
        "peak_bytes": peak_bytes(row),
        "error": row["error"],
    }


def _recommend(rows: list[dict], capacity_bytes: int) -> dict | None:
    """The fastest candidate that ran, with its headroom under the capacity."""
    ok = [r for r in rows if r["outcome"] == "ok" and r["samples_per_s"]]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["samples_per_s"])
    peak = best["peak_bytes"]
    return {**best, "headroom_bytes": None if peak is None else capacity_bytes - peak}
