"""bench compare: planted changes, significance rule, new/missing, env warnings, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_report import NASTY, assert_tables_parse  # tests/ is on sys.path (rootdir-less layout)

from bench.errors import BenchError
from bench.report import compare as C
from bench.report.metrics import METRICS, parse_metrics
from bench.report.synthetic import Synthetic, write_synthetic
from bench.store import load_results, trials_table, write_atomic

REPO = Path(__file__).resolve().parents[1]
FIVE = (0, 1, 2, 3, 4)
SHAPES = ((4, 1), (16, 1), (16, 4))


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", "compare", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def make(folder: Path, **kw) -> Path:
    spec = {"shapes": SHAPES, "seeds": FIVE, "s_min": 20.0, "b_crit": 8.0, **kw}
    write_synthetic(folder, Synthetic(**spec))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("cmp") / "base", rng_seed=1)


def rows_for(result: C.Comparison, metric: str) -> list[C.Row]:
    return [r for r in result.rows if r.metric == metric]


def test_planted_20_percent_drop_over_5_repeats_is_regressed(base, tmp_path):
    cand = make(tmp_path / "cand", rng_seed=2, throughput_factor=0.8)
    res = C.compare(base, cand, metrics=parse_metrics(None), threshold=0.05)
    thr = rows_for(res, "samples_per_s")
    assert len(thr) == 3
    for r in thr:
        assert r.verdict == "regressed"
        assert r.ratio == pytest.approx(0.8, abs=0.05)
        assert r.basis == "repeats 5/5" and r.p_value < 0.05
    # step time went up by 1/0.8: a regression too (lower is better)
    assert {r.verdict for r in rows_for(res, "step_time_ms_median")} == {"regressed"}
    assert {r.verdict for r in rows_for(res, "peak_memory_bytes")} == {"~"}
    assert res.regressed


def test_planted_20_percent_gain_is_improved(base, tmp_path):
    cand = make(tmp_path / "cand", rng_seed=2, throughput_factor=1.2)
    res = C.compare(base, cand, metrics=[METRICS["samples_per_s"]], threshold=0.05)
    assert {r.verdict for r in res.rows} == {"improved"}
    assert not res.regressed


def test_2_percent_jitter_is_not_significant(base, tmp_path):
    cand = make(tmp_path / "cand", rng_seed=3, throughput_factor=1.02, throughput_jitter=0.02)
    res = C.compare(base, cand, metrics=parse_metrics(None), threshold=0.05)
    assert {r.verdict for r in res.rows} == {"~"}
    assert not res.regressed


def test_threshold_alone_does_not_call_a_change():
    """Big relative change, but samples overlap: the test (not the threshold) says '~'."""
    import numpy as np

    a = np.array([100.0, 60.0, 140.0, 80.0, 120.0])
    b = np.array([90.0, 50.0, 130.0, 70.0, 105.0])  # median 90 vs 100: -10 %
    assert C.mann_whitney_p(a, b) > 0.05


def test_min_two_sided_p():
    assert C.min_two_sided_p(5, 5) == pytest.approx(2 / 252)
    assert C.min_two_sided_p(4, 4) == pytest.approx(2 / 70)
    assert C.min_two_sided_p(3, 3) == pytest.approx(0.1)
    assert C.min_two_sided_p(1, 1) == 1.0


def test_one_repeat_falls_back_to_per_step_samples(tmp_path):
    base = make(tmp_path / "b", seeds=(0,), rng_seed=1)
    cand = make(tmp_path / "c", seeds=(0,), rng_seed=2, throughput_factor=0.8)
    res = C.compare(base, cand, metrics=parse_metrics(None), threshold=0.05)
    for r in rows_for(res, "samples_per_s"):
        assert r.basis.startswith("steps ") and r.verdict == "regressed"
    # memory and final loss have no per-step samples: never called on one sample each
    for metric in ("peak_memory_bytes", "final_loss"):
        for r in rows_for(res, metric):
            assert r.basis.startswith("untested") and r.verdict == "~"


def test_one_repeat_memory_change_is_shown_but_untested(tmp_path):
    base = make(tmp_path / "b", seeds=(0,), rng_seed=1)
    cand = make(tmp_path / "c", seeds=(0,), rng_seed=1, memory_factor=2.0)
    res = C.compare(base, cand, metrics=[METRICS["peak_memory_bytes"]])
    assert all(r.ratio == pytest.approx(2.0) and r.verdict == "~" for r in res.rows)
    assert "untested" in C.markdown(res)


def test_new_missing_and_status_regression(base, tmp_path):
    # candidate: drops B=4 (missing), adds B=64x1 (new), and B=16x4 now OOMs (b=16 > 8? no:
    # oom_above applies to b, so make b=16 OOM with oom_above=8).
    cand = make(tmp_path / "c", shapes=((16, 1), (16, 4), (64, 1)), oom_above=8, rng_seed=1)
    res = C.compare(base, cand, metrics=[METRICS["samples_per_s"]])
    verdicts = {(r.label, r.metric): r.verdict for r in res.rows}
    assert verdicts[("mbgd B=4 (4×1)", "-")] == "missing"
    assert verdicts[("mbgd B=64 (64×1)", "-")] == "new"
    assert verdicts[("mbgd B=16 (16×1)", "status")] == "regressed"
    assert verdicts[("mbgd B=64 (16×4)", "status")] == "regressed"
    st = next(r for r in res.rows if r.metric == "status")
    assert st.baseline == "ok 5" and st.candidate == "oom 5"
    assert res.regressed
    assert res.rows[0].verdict == "regressed"  # regressions first


def test_environment_warning(base, tmp_path):
    cand = make(tmp_path / "c", rng_seed=1, device="cpu")
    (cand / "env").mkdir()
    (cand / "env" / "e1.json").write_text(json.dumps({"software": {"torch": "9.9.9"}}))
    (base / "env").mkdir(exist_ok=True)
    (base / "env" / "e0.json").write_text(json.dumps({"torch_version": "2.13.0"}))
    res = C.compare(base, cand, metrics=[METRICS["samples_per_s"]])
    text = " ".join(res.warnings)
    assert "device differs" in text and "cpu" in text
    assert "torch differs" in text and "9.9.9" in text and "2.13.0" in text
    assert "> **Warning:** environments differ" in C.markdown(res)
    same = C.compare(base, base, metrics=[METRICS["samples_per_s"]])
    assert same.warnings == []


def test_matching_by_trial_key_without_seed(base):
    """Same folder on both sides: every trial_key matches, nothing changes."""
    res = C.compare(base, base, metrics=parse_metrics(None))
    assert {r.verdict for r in res.rows} == {"~"}
    assert all(r.ratio == 1.0 for r in res.rows)
    keys = set(load_results(base).trials["trial_key"])
    assert len(keys) == 15  # 3 configurations x 5 seeds, grouped into 3 rows per metric
    assert len(rows_for(res, "samples_per_s")) == 3


def test_markdown_parses_with_nasty_labels(tmp_path):
    rows = []
    for side, factor in (("b", 1.0), ("c", 0.5)):
        rows = [
            {
                "trial_key": f"k{s}",
                "workload": NASTY,
                "mode": "mbgd",
                "micro_batch_size": 4,
                "accumulation_steps": 1,
                "seed": s,
                "status": "ok",
                "samples_per_s": 100.0 * factor + s,
                "device": NASTY,
                "config_json": json.dumps({"workload": NASTY, "seed": s, "note": NASTY}),
            }
            for s in range(5)
        ]
        write_atomic(trials_table(rows), tmp_path / side / "trials" / "all.parquet")
    res = C.compare(tmp_path / "b", tmp_path / "c", metrics=[METRICS["samples_per_s"]])
    text = C.markdown(res)
    assert_tables_parse(text, 1)
    assert "<script" not in text
    assert res.regressed


def test_parse_threshold_and_metrics():
    assert C.parse_threshold("5%") == pytest.approx(0.05)
    assert C.parse_threshold("0.1") == pytest.approx(0.1)
    for bad in ("5", "-1%", "abc", "100%", "nan"):
        with pytest.raises(BenchError):
            C.parse_threshold(bad)
    assert [m.name for m in parse_metrics(["samples_per_s,final_loss", "mfu"])] == [
        "samples_per_s",
        "final_loss",
        "mfu",
    ]
    with pytest.raises(BenchError, match="did you mean 'samples_per_s'"):
        parse_metrics(["samples_per_sec"])


def test_per_step_values_skip_warmup(base):
    from bench.report.prepare import prepare

    prep = prepare(load_results(base))
    key = prep.trials["trial_key"].iloc[0]
    v = C.per_step_values(prep, [key], METRICS["step_time_ms_median"])
    n = int(prep.trials.set_index("trial_key").at[key, "timed_steps"])
    assert len(v) == min(n, C.MAX_STEP_SAMPLES)
    ms = prep.trials.set_index("trial_key").at[key, "step_time_ms_median"]
    assert pd.Series(v).median() == pytest.approx(ms, rel=0.05)


# -- command line --------------------------------------------------------------------------------


def test_cli_exit_codes_and_step_summary(base, tmp_path):
    cand = make(tmp_path / "cand", rng_seed=2, throughput_factor=0.8)
    summary = tmp_path / "summary.md"
    summary.write_text("previous\n")
    r = cli(
        str(base),
        str(cand),
        "--metrics",
        "samples_per_s",
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert r.returncode == 1, r.stderr
    assert "regressed" in r.stdout and r.stdout.startswith("## bench compare")
    text = summary.read_text()
    assert text.startswith("previous\n") and r.stdout.strip() in text
    r = cli(str(base), str(base), "--threshold", "10%")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "metric", "threshold"])
def test_cli_bad_input(base, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = make(tmp_path / "corrupt", shapes=((4, 1),), seeds=(0,))
    victim = next((corrupt / "steps").glob("*.parquet"))
    victim.write_bytes(b"PAR1 garbage")
    args, needle = {
        "missing": ([str(base), str(tmp_path / "nope")], "no results folder"),
        "empty": ([str(empty), str(base)], "empty"),
        "corrupt": ([str(base), str(corrupt)], "corrupted parquet"),
        "metric": ([str(base), str(base), "--metrics", "throughput"], "unknown metric"),
        "threshold": ([str(base), str(base), "--threshold", "five"], "--threshold"),
    }[case]
    r = cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert r.stdout == ""


def test_ratio_text_signs():
    assert C._ratio_text(0.8) == "0.800 (-20.0 %)"
    assert C._ratio_text(math.inf) == "∞"
