"""The pure parts of bench.oom: the boundary search over a ``fits(b)`` callable, the
planner's choice among fake probes, and the margin search's bounds. No processes run.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from bench import oom
from bench.oom import boundary_search
from bench.oom.boundary_search import probe_bound, search
from bench.oom.capacity import Boundary, CapacityResult, find_boundary, margin_search
from bench.oom.planner import divisors, plan
from bench.oom.prober import ProbeFailed

# -- the search itself ---------------------------------------------------------------------


def _counting(threshold: int):
    calls: list[int] = []

    def fits(b: int) -> bool:
        calls.append(b)
        return b <= threshold

    return fits, calls


@pytest.mark.parametrize(
    "threshold", [1, 2, 3, 5, 7, 8, 9, 31, 100, 127, 128, 129, 1000, 4095, 4096, 5000, 65537]
)
def test_search_is_exact_within_the_probe_budget(threshold):
    fits, calls = _counting(threshold)
    lo, hi = search(fits, upper=10**7)
    assert (lo, hi) == (threshold, threshold + 1)
    assert len(calls) == len(set(calls)), "a b was probed twice"
    assert len(calls) <= 2 * math.log2(threshold) + 2


@pytest.mark.parametrize("threshold", [50, 333, 1000, 77777])
def test_search_with_tolerance_brackets_the_boundary(threshold):
    fits, calls = _counting(threshold)
    lo, hi = search(fits, upper=10**7, tolerance=16)
    assert lo <= threshold < hi and hi - lo <= 16
    exact_fits, exact_calls = _counting(threshold)
    search(exact_fits, upper=10**7)
    assert len(calls) <= len(exact_calls)


def test_search_stops_at_the_upper_limit():
    fits, calls = _counting(10**9)
    assert search(fits, upper=300) == (300, None)
    assert max(calls) == 300 and calls[-1] == 300


@pytest.mark.parametrize(("start", "step"), [(1000, None), (700, 20), (3, 1), (64, 2)])
def test_search_from_any_start_finds_the_same_boundary(start, step):
    fits, _ = _counting(97)
    assert search(fits, start=start, first_step=step, upper=10**6) == (97, 98)


def test_search_when_nothing_fits():
    fits, calls = _counting(0)
    assert search(fits, upper=100) == (0, 1)
    assert calls == [1]


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(1) == [1]
    assert divisors(97) == [1, 97]


def test_search_module_is_pure():
    """No I/O, no torch, no processes: its only imports are these two."""
    tree = ast.parse(Path(boundary_search.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "math", "collections.abc"}, imported


def test_public_names_stay_on_the_package():
    assert oom.search is search and oom.divisors is divisors and oom.probe_bound is probe_bound


@pytest.mark.parametrize(("boundary", "bound"), [(0, None), (1, 2), (2, 4), (100, 15), (4096, 26)])
def test_probe_bound(boundary, bound):
    assert probe_bound(boundary) == bound


# -- a search driven by (fake) probes ----------------------------------------------------------


class FakeProber:
    """Prober-like: ``ok`` up to ``threshold``, ``oom`` above, ``failed`` from ``fail_at``;
    ``speed(b)`` is the samples/s of a throughput probe at b."""

    def __init__(self, threshold: int, *, fail_at: int | None = None, speed=None, cap=None):
        self.threshold, self.fail_at, self.cap = threshold, fail_at, cap
        self.speed = speed or (lambda b: float(b))
        self.probes = self.new_probes = 0
        self.runs: list[tuple[int, int, int | None]] = []

    def run(self, b, k=1, *, steps=None, timing_warmup=None, evaluate=None) -> dict:
        self.probes += 1
        self.new_probes += 1
        self.runs.append((b, k, steps))
        outcome = "ok" if b <= self.threshold else "oom"
        if self.fail_at is not None and b >= self.fail_at:
            outcome = "failed"
        return {
            "micro_batch_size": b,
            "accumulation_steps": k,
            "outcome": outcome,
            "error": None if outcome == "ok" else outcome,
            "samples_per_s": self.speed(b) if outcome == "ok" else None,
            "tokens_per_s": None,
            "device": "cpu",
            "cpu_peak_rss_bytes": 1000 + 10 * b,
        }


def test_find_boundary_counts_its_probes_and_stops_on_a_failure():
    prober = FakeProber(100)
    bound = find_boundary(prober, start=1, upper=10**6, tolerance=1)
    assert (bound.boundary, bound.first_oom, bound.limited_by) == (100, 101, None)
    assert bound.probes == bound.new_probes == len(prober.runs) <= 2 * math.log2(100) + 2
    with pytest.raises(ProbeFailed) as exc:
        find_boundary(FakeProber(100, fail_at=32), start=1, upper=10**6, tolerance=1)
    assert exc.value.row["micro_batch_size"] == 32


def test_margin_search_starts_near_the_scaled_boundary_and_never_passes_the_raw_one():
    prober = FakeProber(85)  # 90 % of the memory holds b <= 85 where the raw boundary is 100
    bound = margin_search(prober, raw_boundary=100, margin_pct=10, upper=10**6, tolerance=1)
    assert (bound.boundary, bound.first_oom) == (85, 86)
    assert prober.runs[0][0] == 90 and max(b for b, _, _ in prober.runs) <= 100
    roomy = margin_search(FakeProber(10**6), raw_boundary=100, margin_pct=10, upper=10**6,
                          tolerance=1)  # fmt: skip
    assert (roomy.boundary, roomy.first_oom, roomy.limited_by) == (100, None, "raw boundary")


# -- the planner ------------------------------------------------------------------------------


def _result(capacity: int, safe: int, *, capped=True, margin=None) -> CapacityResult:
    bound = Boundary(safe, safe + 1, None, 1, 1, 0.0)
    return CapacityResult(capacity, capped, bound, 0.0, margin_capacity_bytes=margin)


def test_planner_measures_each_split_once_and_recommends_the_fastest():
    probers: dict[int | None, FakeProber] = {}

    def make_prober(cap):
        # Throughput peaks at b = 4 (b = 6 is the largest divisor that fits the large cap).
        probers[cap] = FakeProber(10**6, cap=cap, speed=lambda b: 100.0 - (b - 4) ** 2)
        return probers[cap]

    small, large = _result(10_000, 4), _result(20_000, 7, margin=18_000)
    plan([small, large], target=12, candidates=3, throughput_steps=5, make_prober=make_prober)
    assert [c["micro_batch_size"] for c in small.plan["candidates"]] == [2, 3, 4]
    assert [c["micro_batch_size"] for c in large.plan["candidates"]] == [3, 4, 6]
    assert all(c["accumulation_steps"] * c["micro_batch_size"] == 12
               for r in (small, large) for c in r.plan["candidates"])  # fmt: skip
    # Speed without the cap: each b once (2 warm-up + 5 timed steps); the pick, b = 4,
    # then ran once under each capacity where its safe batch was verified (the large
    # one's margin).
    assert probers[None].runs == [(2, 6, 7), (3, 4, 7), (4, 3, 7), (6, 2, 7)]
    assert probers[10_000].runs == [(4, 3, 7)] and probers[18_000].runs == [(4, 3, 7)]
    for result in (small, large):
        rec = result.plan["recommended"]
        assert (rec["micro_batch_size"], rec["accumulation_steps"]) == (4, 3)
        assert rec["headroom_bytes"] == result.capacity_bytes - rec["peak_bytes"]


def test_planner_without_a_fitting_run_recommends_nothing():
    result = _result(10_000, 4, capped=False)
    caps = []

    def make_prober(cap):
        caps.append(cap)
        return FakeProber(0)  # every throughput probe runs out of memory

    plan([result], target=12, candidates=6, throughput_steps=1, make_prober=make_prober)
    assert caps == [None], "speed, and the device's own memory, are measured without a cap"
    assert result.plan["recommended"] is None
    assert {c["outcome"] for c in result.plan["candidates"]} == {"oom"}


class CapSlowedProber(FakeProber):
    """b = 8 is the faster split without a cap, b = 4 under one (a cap's malloc
    settings slow b = 8), each timing with some noise between runs."""

    def run(self, b, k=1, *, steps=None, timing_warmup=None, evaluate=None, repeat=0) -> dict:
        row = super().run(b, k, steps=steps, timing_warmup=timing_warmup, evaluate=evaluate)
        uncapped = {4: 100.0, 8: 150.0}[b] + repeat
        row["samples_per_s"] = uncapped if self.cap is None else {4: 90.0, 8: 40.0}[b]
        row["vmdata_peak_bytes"] = 500 + b
        return row


def test_planner_ranks_by_uncapped_speed_in_interleaved_rounds():
    probers: dict[int | None, CapSlowedProber] = {}

    def make_prober(cap):
        probers.setdefault(cap, CapSlowedProber(10**6, cap=cap))
        return probers[cap]

    result = _result(10_000, 8)
    plan([result], target=8, candidates=2, throughput_steps=4, make_prober=make_prober, rounds=3)
    rec = result.plan["recommended"]
    assert (rec["micro_batch_size"], rec["accumulation_steps"]) == (8, 1)
    assert (rec["samples_per_s"], rec["samples_per_s_min"], rec["samples_per_s_max"]) == (
        151.0, 150.0, 152.0,
    )  # fmt: skip
    # Interleaved: every candidate once per round, all without a cap.
    assert [b for b, _, _ in probers[None].runs] == [4, 8, 4, 8, 4, 8]
    # The pick ran once under the cap; its peak there (VmData) gives the headroom.
    assert probers[10_000].runs == [(8, 1, 6)]
    assert rec["peak_bytes"] == 508 and rec["headroom_bytes"] == 10_000 - 508
