"""The memory model: a ladder of batch sizes in one process gives the line M0 + m*b on
the capped quantity, the line predicts b*, and real probes close in from there (falling
back to bisection where the line is wrong). No processes run."""

from __future__ import annotations

import json
import math

import pytest
from test_oom import FakeRunner, MiB, parse

from bench import oom
from bench.oom.boundary_search import search
from bench.oom.model_search import fit_line, ladder_sizes, model_search, predict

CAP = 600 * MiB


def _machine(
    per_sample: float, *, floor=380 * MiB, fixed=360 * MiB, curve=None, ladder_extra=0,
    ladder_slope=1.0,
):  # fmt: skip
    """peak(b) = max(floor, fixed + per_sample * b) (+ curve(b)); a ladder's jobs carry
    ``ladder_extra`` more (what its process kept from earlier jobs) and grow by
    ``ladder_slope`` times as much a sample. Returns probe, ladder, and the real probes
    asked."""
    calls: list[int] = []

    def peak(b: int, extra: int = 0, slope: float = 1.0) -> int:
        grown = fixed + per_sample * slope * b
        return int(max(floor, grown) + (curve(b) if curve else 0) + extra)

    def probe(b: int) -> tuple[bool, int | None]:
        calls.append(b)
        return peak(b) <= CAP, peak(b) if peak(b) <= CAP else None

    def ladder(sizes: list[int]) -> list[tuple[int, bool, int | None]]:
        rungs = []
        for b in sizes:
            got = peak(b, ladder_extra, ladder_slope)
            rungs.append((b, got <= CAP, got if got <= CAP else None))
            fits = got <= CAP
            if not fits:
                break
        return rungs

    return probe, ladder, calls


def _truth(per_sample: float, fixed: int = 360 * MiB, curve=None) -> int:
    b = 1
    while max(380 * MiB, fixed + per_sample * (b + 1)) + (curve(b + 1) if curve else 0) <= CAP:
        b += 1
    return b


def test_line_prediction_and_ladder():
    slope, intercept = fit_line((128, 400 * MiB), (1024, 400 * MiB + 896 * 16 * 1024))
    assert slope == 16 * 1024 and intercept == 400 * MiB - 128 * 16 * 1024
    assert predict(600 * MiB, slope, intercept) == 128 + (200 * MiB) // (16 * 1024)
    assert predict(600 * MiB, 0.0, 1.0) is None
    assert ladder_sizes(1, 100) == [16, 32, 64, 100] and ladder_sizes(40, 30) == [30]


@pytest.mark.parametrize("per_sample", [16 * 1024, 40 * 1024, 1.48 * MiB, 0.77 * MiB])
def test_a_linear_machine_takes_two_real_probes(per_sample):
    probe, ladder, calls = _machine(per_sample)
    truth = _truth(per_sample)
    lo, hi, model = model_search(probe, ladder, capacity=CAP, start=1, upper=10**6)
    assert (lo, hi) == (truth, truth + 1)
    assert model.predicted == truth and model.slope_bytes == pytest.approx(per_sample, rel=1e-3)
    assert calls == [truth, truth + 1] and model.search_probes == 2
    assert model.ladder[-1] > truth and all(b <= truth for b in model.ladder[:-1])
    bisect_calls: list[int] = []
    search(lambda b: bisect_calls.append(b) or probe(b)[0], upper=10**6)
    assert len(bisect_calls) > 10


@pytest.mark.parametrize("extra_mib", [-4, -1, 1, 2, 8])
def test_a_ladder_process_that_holds_more_or_less_costs_a_few_probes(extra_mib):
    # The ladder's jobs run after others: their peaks sit a few MiB off a fresh
    # process's. The first fresh fit re-anchors the line on its own peak.
    probe, ladder, calls = _machine(16 * 1024, ladder_extra=extra_mib * MiB)
    truth = _truth(16 * 1024)
    lo, hi, model = model_search(probe, ladder, capacity=CAP, start=1, upper=10**6)
    assert (lo, hi) == (truth, truth + 1)
    assert model.predicted != truth and len(calls) <= 5, calls


def test_fresh_fits_far_apart_replace_a_ladder_slope_that_is_off():
    # resnet measured: the ladder's jobs held 64 MiB more and grew 16 % less a sample
    # than fresh processes (caches kept between jobs).
    probe, ladder, calls = _machine(0.73 * MiB, ladder_extra=64 * MiB, ladder_slope=0.84)
    truth = _truth(0.73 * MiB)
    lo, hi, model = model_search(probe, ladder, capacity=CAP, start=1, upper=10**6)
    assert (lo, hi) == (truth, truth + 1) and len(calls) <= 5, calls


def test_a_wrong_model_falls_back_to_bisection_and_still_finds_b_star():
    # Memory bends upwards past b = 9000 (a second regime the line cannot know).
    def curve(b):
        return 0 if b < 9000 else (b - 9000) ** 2 * 64

    probe, ladder, calls = _machine(16 * 1024, curve=curve)
    truth = _truth(16 * 1024, curve=curve)
    lo, hi, model = model_search(probe, ladder, capacity=CAP, start=1, upper=10**6)
    assert (lo, hi) == (truth, truth + 1) and model.predicted != truth
    assert len(calls) == len(set(calls)) <= 2 * math.log2(abs(model.predicted - truth)) + 4


def test_the_dataset_limit_ends_the_ladder_and_one_probe_confirms_it():
    probe, ladder, calls = _machine(1024)
    lo, hi, model = model_search(probe, ladder, capacity=CAP, start=1, upper=3000)
    assert (lo, hi) == (3000, None) and model.ladder[-1] == 3000 and calls == [3000]


def test_without_two_ladder_fits_the_search_doubles_from_the_ladders_fit():
    probe, ladder, calls = _machine(8 * MiB)  # b* = 30: the ladder's 16 fits, 32 does not
    lo, hi, model = model_search(probe, ladder, capacity=CAP, start=1, upper=10**6)
    assert (lo, hi) == (_truth(8 * MiB), _truth(8 * MiB) + 1)
    assert model.predicted is None and model.ladder == [16, 32] and calls[:2] == [16, 32]


def test_the_command_predicts_then_confirms(fake_machine_model, tmp_path, capsys):
    args = parse("--workload", "teacher-mlp", "--capacity", "400MiB", "--margin", "0",
                 "--search", "model", "--results", str(tmp_path), "--json")  # fmt: skip
    runner = FakeRunner()  # 300 MiB + 1 MiB a sample: b* = 100 at 400 MiB
    assert oom.main(args, runner=runner) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert (c["boundary"], c["first_oom"], c["exact"]) == (100, 101, True)
    assert c["model"]["predicted"] == 100 and c["model"]["points"] == [
        [32, 332 * MiB],
        [64, 364 * MiB],
    ]
    # The ladder 16, 32, 64, 128 (OOM) in one process; then 100 and 101 for real,
    # each confirmed twice more.
    assert [b for b, _, _ in runner.calls[:6]] == [16, 32, 64, 128, 100, 101]
    assert c["model"]["ladder"] == [16, 32, 64, 128] and c["model"]["search_probes"] == 2
    assert c["probes"] == 2 and c["new_probes"] == 2 + 4 == len(runner.calls) - 4
    kinds = __import__("pandas").read_parquet(c_path(tmp_path))["kind"].tolist()
    assert kinds.count("ladder") == 4 and kinds.count("boundary") == 6
    # Run again: the stored ladder and probes answer, nothing runs.
    runner.calls.clear()
    assert oom.main(args, runner=runner) == 0 and runner.calls == []


def test_the_margin_search_starts_where_the_fresh_line_meets_the_reduced_capacity(
    fake_machine_model, tmp_path, capsys
):
    args = parse("--workload", "teacher-mlp", "--capacity", "400MiB", "--margin", "10",
                 "--search", "model", "--results", str(tmp_path), "--json")  # fmt: skip
    runner = FakeRunner()  # b* = 100 at 400 MiB; 60 at 360 MiB, the capacity after 10 %
    assert oom.main(args, runner=runner) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert c["model"]["anchor"] == [100, 400 * MiB] and c["model"]["line_slope"] == MiB
    m = c["margin_search"]
    assert (c["boundary_after_margin"], m["first_oom"], m["exact"]) == (60, 61, True)
    assert m["probes"] == 2 and m["new_probes"] == 2 + 4  # 60 and 61, confirmed twice more


def c_path(tmp_path):
    return next(tmp_path.rglob("probes.parquet"))


@pytest.fixture
def fake_machine_model(monkeypatch):
    from bench import procs

    info = {"total_bytes": 8 * 2**30, "baseline_bytes": 250 * MiB, "name": "cpu"}
    monkeypatch.setattr(procs, "measure_baseline", lambda device: info)
    monkeypatch.setattr(procs, "inspect_config", lambda config: (100_000, "cpu"))
