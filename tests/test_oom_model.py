"""The memory model: a line M0 + m*b on the capped quantity from a few probes, the
predicted boundary, and the search from there that falls back to bisection when the
line is wrong. No processes run."""

from __future__ import annotations

import json
import math

import pytest
from test_oom import FakeRunner, MiB, parse

from bench import oom
from bench.oom.boundary_search import search
from bench.oom.model_search import fit_line, model_search, predict

CAP, BASE = 600 * MiB, 340 * MiB


def _machine(per_sample: float, *, floor: int = 380 * MiB, fixed: int = 360 * MiB, curve=None):
    """probe(b): peak = max(floor, fixed + per_sample * b) (+ curve(b)); fits under CAP."""
    calls: list[int] = []

    def probe(b: int) -> tuple[bool, int | None]:
        calls.append(b)
        peak = max(floor, fixed + per_sample * b) + (curve(b) if curve else 0)
        return peak <= CAP, int(peak) if peak <= CAP else None

    return probe, calls


def _truth(per_sample: float, fixed: int = 360 * MiB, curve=None) -> int:
    b = 1
    while max(380 * MiB, fixed + per_sample * (b + 1)) + (curve(b + 1) if curve else 0) <= CAP:
        b += 1
    return b


def test_line_and_prediction():
    slope, intercept = fit_line((128, 400 * MiB), (1024, 400 * MiB + 896 * 16 * 1024))
    assert slope == 16 * 1024 and intercept == 400 * MiB - 128 * 16 * 1024
    assert predict(600 * MiB, slope, intercept) == 128 + (200 * MiB) // (16 * 1024)
    assert predict(600 * MiB, 0.0, 1.0) is None


@pytest.mark.parametrize("per_sample", [16 * 1024, 40 * 1024, 1.48 * MiB, 0.77 * MiB])
def test_a_linear_machine_is_found_in_a_few_probes(per_sample):
    probe, calls = _machine(per_sample)
    truth = _truth(per_sample)
    lo, hi, model = model_search(probe, capacity=CAP, baseline=BASE, start=1, upper=10**6)
    assert (lo, hi) == (truth, truth + 1)
    assert model.predicted == truth and model.slope_bytes == pytest.approx(per_sample, rel=1e-3)
    # The scan (factors of 8 from 16), one refinement, a fit at b* and an OOM at b* + 1.
    probes = len(set(calls))
    assert probes <= model.scan_probes + 4 <= 9
    bisect_calls: list[int] = []
    search(lambda b: bisect_calls.append(b) or probe(b)[0], upper=10**6)
    assert probes < len(bisect_calls)


def test_a_wrong_model_falls_back_to_bisection_and_still_finds_b_star():
    # Memory bends upwards past b = 2000 (a second regime the line cannot know).
    def curve(b):
        return 0 if b < 2000 else (b - 2000) ** 2 * 64

    probe, calls = _machine(16 * 1024, curve=curve)
    truth = _truth(16 * 1024, curve=curve)
    lo, hi, model = model_search(probe, capacity=CAP, baseline=BASE, start=1, upper=10**6)
    assert (lo, hi) == (truth, truth + 1) and model.predicted != truth
    assert len(set(calls)) <= model.scan_probes + 2 * math.log2(abs(model.predicted - truth)) + 4


def test_the_dataset_limit_ends_the_scan():
    probe, calls = _machine(1024)
    lo, hi, model = model_search(probe, capacity=CAP, baseline=BASE, start=1, upper=3000)
    assert (lo, hi) == (3000, None) and max(calls) == 3000 and len(calls) <= 4


def test_the_command_predicts_then_confirms(fake_machine_model, tmp_path, capsys):
    args = parse("--workload", "teacher-mlp", "--capacity", "400MiB", "--margin", "0",
                 "--search", "model", "--results", str(tmp_path), "--json")  # fmt: skip
    runner = FakeRunner()  # 300 MiB + 1 MiB a sample: b* = 100 at 400 MiB
    assert oom.main(args, runner=runner) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert (c["boundary"], c["first_oom"], c["exact"]) == (100, 101, True)
    assert c["model"]["predicted"] == 100 and c["model"]["points"] == [
        [72, 372 * MiB],
        [93, 393 * MiB],
    ]
    # Scanned 16, 128 (OOM), 72; refined at 93; then 100 and 101, confirmed twice more.
    assert [b for b, _, _ in runner.calls[:6]] == [16, 128, 72, 93, 100, 101]
    assert c["new_probes"] == len(runner.calls) == 6 + 4


@pytest.fixture
def fake_machine_model(monkeypatch):
    from bench import procs

    info = {"total_bytes": 8 * 2**30, "baseline_bytes": 250 * MiB, "name": "cpu"}
    monkeypatch.setattr(procs, "measure_baseline", lambda device: info)
    monkeypatch.setattr(procs, "inspect_config", lambda config: (100_000, "cpu"))
