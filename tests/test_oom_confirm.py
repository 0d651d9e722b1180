"""Confirmed boundaries: b* only when it fit R of R and b* + 1 failed R of R, else the
band between; stored runs reused only as the same R-of-R evidence; the search and its
confirmation never ask past the upper bound, whatever the outcomes. No processes run."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_oom import FakeRunner, MiB, parse

from bench import oom
from bench.oom.boundary_search import confirm_band, search


def _threshold_fits(threshold: int, noisy: dict[tuple[int, int], bool] | None = None):
    """fits(b, i): b <= threshold, except the (b, i) listed in ``noisy``."""
    calls: list[tuple[int, int]] = []

    def fits(b: int, i: int) -> bool:
        calls.append((b, i))
        return (noisy or {}).get((b, i), b <= threshold)

    return fits, calls


def test_clean_boundary_is_exact_after_r_runs_at_each_end():
    fits, calls = _threshold_fits(100)
    assert confirm_band(fits, 100, 101, repeats=3, upper=10**6) == (100, 101)
    assert sorted(set(calls)) == [(100, 0), (100, 1), (100, 2), (101, 0), (101, 1), (101, 2)]


def test_a_first_oom_that_fits_once_widens_the_band_upwards():
    fits, _ = _threshold_fits(100, {(101, 1): True})
    assert confirm_band(fits, 100, 101, repeats=3, upper=10**6) == (100, 102)


def test_a_fit_that_fails_once_widens_the_band_downwards():
    fits, _ = _threshold_fits(100, {(100, 2): False})
    assert confirm_band(fits, 100, 101, repeats=3, upper=10**6) == (99, 101)


def test_a_noisy_region_is_bracketed_by_clean_verdicts():
    # 98..103 disagree between runs: the band is [97, 104], both ends clean R of R.
    noisy = {(b, b % 3): b > 100 for b in range(98, 104)}
    fits, calls = _threshold_fits(100, noisy)
    lo, hi = confirm_band(fits, 100, 101, repeats=3, upper=10**6)
    assert (lo, hi) == (97, 104)
    assert all(fits(lo, i) for i in range(3)) and not any(fits(hi, i) for i in range(3))


def test_the_dataset_limit_terminates_the_search_and_the_confirmation():
    fits, calls = _threshold_fits(10**9)
    lo, hi = search(lambda b: fits(b, 0), upper=16384)
    assert (lo, hi) == (16384, None)
    assert confirm_band(fits, lo, hi, repeats=3, upper=16384) == (16384, None)
    assert max(b for b, _ in calls) == 16384


def test_nothing_always_fits():
    # b = 1 fits once in three runs: no b always fits, and 2 is the first that never does.
    fits, _ = _threshold_fits(0, {(1, 0): True})
    assert confirm_band(fits, 1, 2, repeats=3, upper=100) == (0, 2)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    upper=st.integers(1, 5000),
    start=st.integers(1, 6000),
    repeats=st.integers(1, 4),
)
def test_any_outcomes_respect_the_upper_bound_and_terminate(seed, upper, start, repeats):
    """Outcomes that are neither monotone nor repeatable (a noisy machine): every b
    asked lies in [1, upper], the search ends within its budget, the band is ordered."""
    rng = random.Random(seed)
    asked: list[int] = []

    def fits(b: int, i: int = 0) -> bool:
        asked.append(b)
        assert len(asked) < 10_000, "no termination"
        return rng.random() < 0.5

    lo, hi = search(fits, start=start, upper=upper)
    lo, hi = confirm_band(fits, lo, hi, repeats=repeats, upper=upper)
    assert all(1 <= b <= upper for b in asked)
    assert 0 <= lo <= upper and (hi is None or lo < hi <= upper)


# -- the command: a fake runner whose outcome near the boundary varies -------------------------


class NoisyRunner(FakeRunner):
    """FakeRunner (boundary 100 at 400 MiB) whose probe at b = 101 fits on every second
    call: the machine's noise at the boundary, as measured for char-lm."""

    def __init__(self) -> None:
        super().__init__()
        self.at_101 = 0

    def __call__(self, config, *, cap_bytes=None, timeout_s=None):
        run = super().__call__(config, cap_bytes=cap_bytes, timeout_s=timeout_s)
        if config.batch_size == 101:
            self.at_101 += 1
            if self.at_101 % 2 == 0:
                run.result.trial.update(status="ok", error=None)
        return run


@pytest.fixture
def fake_machine(monkeypatch):
    from bench import procs

    info = {"total_bytes": 8 * 2**30, "baseline_bytes": 250 * MiB, "name": "cpu"}
    monkeypatch.setattr(procs, "measure_baseline", lambda device: info)
    monkeypatch.setattr(procs, "inspect_config", lambda config: (100_000, "cpu"))


ARGS = ("--workload", "teacher-mlp", "--capacity", "400MiB", "--margin", "0")


def test_a_noisy_boundary_is_reported_as_a_band_and_reused_as_such(fake_machine, tmp_path, capsys):
    args = parse(*ARGS, "--results", str(tmp_path), "--json")
    runner = NoisyRunner()
    assert oom.main(args, runner=runner) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert (c["boundary"], c["first_oom"], c["exact"], c["band"]) == (100, 102, False, [100, 102])
    assert c["repeats"] == 3 and c["confirm_probes"] > 0
    assert c["new_probes"] == len(runner.calls) == c["probes"] + c["confirm_probes"]
    probes = pd.read_parquet(tmp_path / "oom" / "teacher-mlp" / "probes.parquet")
    at_101 = probes[probes["micro_batch_size"] == 101].sort_values("repeat")
    assert at_101["repeat"].tolist() == [0, 1] and at_101["outcome"].tolist() == ["oom", "ok"]
    assert set(probes["phase"]) == {"search", "confirm"}
    # The next run reads the same evidence: the same band, no new probe.
    again = FakeRunner()
    assert oom.main(args, runner=again) == 0
    c2 = json.loads(capsys.readouterr().out)["capacities"][0]
    assert again.calls == [] and c2["band"] == [100, 102] and c2["new_probes"] == 0
    # The text output names a band, not a b*.
    assert oom.main(parse(*ARGS, "--results", str(tmp_path)), runner=FakeRunner()) == 0
    assert "band 100..102 (R=3)" in capsys.readouterr().out


def test_one_stored_run_is_not_r_runs_of_evidence(fake_machine, tmp_path, capsys):
    single = FakeRunner()
    assert oom.main(parse(*ARGS, "--confirm", "1", "--results", str(tmp_path), "--json"),
                    runner=single) == 0  # fmt: skip
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert (c["boundary"], c["first_oom"], c["confirm_probes"]) == (100, 101, 0)
    confirmed = FakeRunner()
    assert oom.main(parse(*ARGS, "--results", str(tmp_path), "--json"), runner=confirmed) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert (c["boundary"], c["first_oom"], c["exact"]) == (100, 101, True)
    # Only the repetitions ran: b = 100 and 101 twice each; the search came from the file.
    assert sorted(b for b, _, _ in confirmed.calls) == [100, 100, 101, 101]


def test_a_user_upper_bound_holds_after_any_outcome(fake_machine, tmp_path, capsys):
    runner = NoisyRunner()
    args = parse(*ARGS, "--max-batch", "101", "--results", str(tmp_path), "--json")
    assert oom.main(args, runner=runner) == 0
    c = json.loads(capsys.readouterr().out)["capacities"][0]
    assert max(b for b, _, _ in runner.calls) <= 101
    assert c["boundary"] == 100 and c["first_oom"] in (101, None)
    assert 400 * MiB == c["capacity_bytes"]


def test_the_report_figure_draws_the_band_and_the_margin_line_from_probes(
    fake_machine, tmp_path, capsys
):
    import matplotlib

    matplotlib.use("Agg")
    from bench.report.figures import load_oom_probes, oom_boundaries, probe_boundaries

    args = parse("--workload", "teacher-mlp", "--capacity", "400MiB", "--capacity", "500MiB",
                 "--margin", "10", "--results", str(tmp_path), "--json")  # fmt: skip
    assert oom.main(args, runner=NoisyRunner()) == 0
    caps = {c["capacity_bytes"]: c for c in json.loads(capsys.readouterr().out)["capacities"]}
    probes = load_oom_probes(tmp_path / "oom" / "teacher-mlp", [])
    lines = probe_boundaries(probes).set_index("capacity_bytes")
    assert lines.loc[400 * MiB, ["last_ok", "first_bad", "exact"]].tolist() == [100, 102, False]
    assert lines.loc[500 * MiB, ["last_ok", "first_bad", "exact"]].tolist() == [200, 201, True]
    assert lines.loc[int(400 * MiB * 0.9), "margin_pct"] == 10
    fig = oom_boundaries(probes, [])
    ax = fig.axes[0]
    drawn = {ln.get_label(): ln for ln in ax.get_lines()}
    safe = drawn["safe b after 10% margin fp32 adamw"]
    assert list(safe.get_xdata()) == pytest.approx([400 * MiB, 500 * MiB])
    assert list(safe.get_ydata()) == [c["boundary_after_margin"] for c in caps.values()]
    (band,) = [c for c in ax.collections if c.get_label().startswith("band")]
    (segment,) = band.get_segments()
    assert segment[:, 1].tolist() == [100, 102] and segment[0, 0] == 400 * MiB
