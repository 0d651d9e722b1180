"""The planner: for a target batch B, the fastest split b x k = B that fits.

Only divisors b of B are candidates (no short final micro-batch), and only those at or
below the boundary after the margin. The cap decides fit, not speed: under
``RLIMIT_DATA`` the child fixes malloc's mmap threshold, which makes small-tensor CPU
code allocate differently (measured on char-lm: b = 103 at 219-451 samples/s capped
against 440-667 uncapped), so the candidates are timed without a cap, in ``rounds``
interleaved rounds (every candidate once per round, so a change in machine load falls
on all of them), and ranked by their median. The pick is then run once under the
capacity's cap (after the margin) with its k: that run shows it fits and gives its
peak on the capped quantity; a pick that does not fit gives way to the next fastest.
"""

from __future__ import annotations

import math
import statistics
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
    rounds: int = 1,
) -> None:
    """Set each result's ``plan``: throughput of (b, B / b) for the ``candidates``
    largest divisors b of B that fit. ``make_prober(cap)`` gives a throughput prober
    under ``cap`` (None: no cap); ``results`` ascend in capacity, tightest first."""
    fitting = {
        id(r): [d for d in divisors(target) if d <= r.safe_batch][-candidates:] for r in results
    }
    wanted = sorted({b for bs in fitting.values() for b in bs})
    speed = _time_uncapped(make_prober(None), wanted, target, throughput_steps, rounds)
    for result in results:
        rows = [_candidate(b, target // b, speed[b]) for b in fitting[id(result)]]
        checker = make_prober(_measuring_capacity(result)) if result.capped else None
        result.plan = {
            "target_batch": target,
            "candidates": rows,
            "recommended": _recommend(rows, result, checker, target, throughput_steps),
            "rounds": rounds,
            "note": "b divides B exactly (no short final micro-batch); candidates are the largest "
            f"{candidates} divisors of {target} at or below the boundary after the margin, "
            f"timed without the cap ({rounds} interleaved rounds, median); the pick ran under the cap",
        }


def _time_uncapped(
    prober: Prober, wanted: list[int], target: int, steps: int, rounds: int
) -> dict[int, list[dict]]:
    """Each candidate's runs, ``rounds`` of them, interleaved: round r runs every b."""
    runs: dict[int, list[dict]] = {b: [] for b in wanted}
    for r in range(rounds):
        for b in wanted:
            # No evaluation: its time is excluded from throughput anyway.
            kw = dict(steps=2 + steps, timing_warmup=2, evaluate=False)
            runs[b].append(prober.run(b, target // b, **kw, **({"repeat": r} if r else {})))
    return runs


def _measuring_capacity(result: CapacityResult) -> int | None:
    """Where the safe batch was verified: under capacity x (1 - margin), or with no
    margin under the capacity itself (none for the device's own memory)."""
    if result.margin_capacity_bytes is not None:
        return result.margin_capacity_bytes
    return result.capacity_bytes if result.capped else None


def _candidate(b: int, k: int, runs: list[dict]) -> dict:
    ok = [r["samples_per_s"] for r in runs if r["outcome"] == "ok" and r["samples_per_s"]]
    bad = next((r for r in runs if r["outcome"] != "ok"), None)
    tokens = [r["tokens_per_s"] for r in runs if r["outcome"] == "ok" and r["tokens_per_s"]]
    return {
        "micro_batch_size": b,
        "accumulation_steps": k,
        "outcome": "ok" if bad is None else bad["outcome"],
        "samples_per_s": statistics.median(ok) if ok and bad is None else None,
        "samples_per_s_min": min(ok) if ok else None,
        "samples_per_s_max": max(ok) if ok else None,
        "tokens_per_s": statistics.median(tokens) if tokens and bad is None else None,
        "runs": len(runs),
        "peak_bytes": peak_bytes(runs[-1]),
        "error": None if bad is None else bad["error"],
    }


def _recommend(rows, result: CapacityResult, checker, target: int, steps: int) -> dict | None:
    """The fastest candidate (median) that fits: confirmed by one run under the cap with
    its k, whose peak (the capped quantity) gives the headroom. Uncapped (the device's
    own memory), the timed runs themselves showed the fit."""
    ok = sorted(
        (r for r in rows if r["outcome"] == "ok" and r["samples_per_s"]),
        key=lambda r: r["samples_per_s"],
        reverse=True,
    )
    for best in ok:
        b, k = best["micro_batch_size"], best["accumulation_steps"]
        if checker is not None:
            row = checker.run(b, k, steps=2 + steps, timing_warmup=2, evaluate=False)
            if row["outcome"] != "ok":
                continue
            best = {**best, "peak_bytes": peak_bytes(row), "capped_outcome": row["outcome"]}
        peak = best["peak_bytes"]
        return {**best, "headroom_bytes": None if peak is None else result.capacity_bytes - peak}
    return None
