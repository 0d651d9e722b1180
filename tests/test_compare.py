"""bench compare: planted changes, significance rule, new/missing, env warnings, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_report import (  # tests/ is on sys.path (rootdir-less layout)
    NASTY,
    PLANTED,
    assert_no_markup_from,
    assert_tables_parse,
    assert_tables_render,
    render_markdown,
)

from bench.config import TrialConfig
from bench.errors import BenchError
from bench.report import compare as C
from bench.report.compare import sides
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


def test_one_run_a_side_shows_the_step_test_but_never_calls_it(tmp_path):
    """The same configuration, one run a side, the candidate's run 20 % slower at every
    step (as a run on a busy machine is): the pooled steps give a tiny p, but one run a
    side cannot tell the code from the run's luck, so `~` and untested."""
    base = make(tmp_path / "b", seeds=(0,), rng_seed=1)
    cand = make(tmp_path / "c", seeds=(0,), rng_seed=2, throughput_factor=0.8)
    res = C.compare(base, cand, metrics=parse_metrics(None), threshold=0.05)
    for metric in ("samples_per_s", "step_time_ms_median"):
        for r in rows_for(res, metric):
            assert r.basis.startswith("within-run steps ") and "1/1 runs (untested)" in r.basis
            assert r.p_value < 1e-6 and r.verdict == "~" and not r.tested
    # memory and final loss have no per-step samples: never called on one sample each
    for metric in ("peak_memory_bytes", "final_loss"):
        for r in rows_for(res, metric):
            assert r.basis.startswith("untested") and r.verdict == "~"
    assert not res.regressed and res.counts() == {"untested": 12}


def merge(folder: Path, *parts: Path) -> Path:
    """One results folder holding the trials of several (their trial_keys differ)."""
    for part in parts:
        for sub in ("trials", "steps"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for f in (part / sub).glob("*.parquet"):
                (folder / sub / f.name).write_bytes(f.read_bytes())
    return folder


def test_two_runs_a_side_clearly_apart_are_called(tmp_path):
    """Positive control for the run gate: 2 runs a side, every candidate run ~20 % below
    every baseline run, is still called by the within-run step test."""
    base = make(tmp_path / "b", seeds=(0, 1), rng_seed=1)
    cand = make(tmp_path / "c", seeds=(0, 1), rng_seed=2, throughput_factor=0.8)
    res = C.compare(base, cand, metrics=[METRICS["samples_per_s"]], threshold=0.05)
    assert [r.verdict for r in res.rows] == ["regressed"] * 3
    assert all(r.basis.endswith(", 2/2 runs") and r.tested for r in res.rows)
    res = C.compare(cand, base, metrics=[METRICS["samples_per_s"]], threshold=0.05)
    assert [r.verdict for r in res.rows] == ["improved"] * 3


def test_two_runs_a_side_that_overlap_are_not_called(tmp_path):
    """Candidate runs at 0.8x and 1.0x of the baseline's: the median is 10 % lower and
    the pooled steps differ (p tiny), but one candidate run is as fast as the baseline,
    so the runs overlap and the change is not called; the row was tested."""
    base = make(tmp_path / "b", seeds=(0, 1), rng_seed=1)
    slow = make(tmp_path / "slow", seeds=(0,), rng_seed=2, throughput_factor=0.8)
    fast = make(tmp_path / "fast", seeds=(1,), rng_seed=3)
    cand = merge(tmp_path / "c", slow, fast)
    res = C.compare(base, cand, metrics=[METRICS["samples_per_s"]], threshold=0.05)
    for r in res.rows:
        assert r.ratio == pytest.approx(0.9, abs=0.03) and r.p_value < 1e-6
        assert r.verdict == "~" and r.tested
    assert res.counts() == {"~": 3}


def test_runs_separated():
    import numpy as np

    a = np.array([100.0, 102.0])
    assert C.runs_separated(a, np.array([90.0, 94.0]), 0.05) == -1  # 94 < 100 * 0.95
    assert C.runs_separated(a, np.array([90.0, 96.0]), 0.05) == 0  # 96 is within 5 % of 100
    assert C.runs_separated(a, np.array([108.0, 120.0]), 0.05) == 1  # 108 > 102 * 1.05
    assert C.runs_separated(a, np.array([107.0, 120.0]), 0.05) == 0
    assert C.runs_separated(a, np.array([50.0]), 0.05) == 0  # one run: never separated


def test_one_repeat_memory_change_is_shown_but_untested(tmp_path):
    base = make(tmp_path / "b", seeds=(0,), rng_seed=1)
    cand = make(tmp_path / "c", seeds=(0,), rng_seed=1, memory_factor=2.0)
    res = C.compare(base, cand, metrics=[METRICS["peak_memory_bytes"]])
    assert all(r.ratio == pytest.approx(2.0) and r.verdict == "~" for r in res.rows)
    assert "untested" in C.markdown(res)


def test_cpu_peak_memory_is_what_a_trial_adds_not_the_whole_process(tmp_path):
    """On CPU the metric is the RSS high-water minus the trial's start: a candidate whose
    trials add twice the memory reads x2.00, though its whole process (~300 MiB of start,
    drifting from trial to trial) grows by a few percent."""
    cpu = {"gpu": False, "rss_start": True, "seeds": (0,), "device": "cpu"}
    base = make(tmp_path / "b", rng_seed=1, **cpu)
    cand = make(tmp_path / "c", rng_seed=2, memory_factor=2.0, **cpu)
    metrics = [METRICS["peak_memory_bytes"], METRICS["cpu_peak_rss_bytes"]]
    res = C.compare(base, cand, metrics=metrics)
    added = rows_for(res, "peak_memory_bytes")
    assert len(added) == len(SHAPES)
    assert all(r.ratio == pytest.approx(2.0) for r in added)
    # b = 4: 2 MiB a sample, 8 MiB added; the process held ~300 MiB before the trial.
    assert {r.baseline for r in added} == {"8.00 MiB", "32.00 MiB"}
    whole = rows_for(res, "cpu_peak_rss_bytes")
    assert all(1.0 < r.ratio < 1.3 for r in whole)


@pytest.mark.parametrize(("per_sample", "verdict"), [(4096, "~"), (2 * 2**20, "regressed")])
def test_cpu_memory_added_counts_only_beyond_the_counters_step(tmp_path, per_sample, verdict):
    """A baseline whose trials add nothing against a candidate adding 16-64 KiB: an
    infinite ratio over 5 repeats, yet below what RSS resolves on 2 CPUs (512 KiB):
    '~', saying why. 8-32 MiB added is a regression."""
    cpu = {"gpu": False, "rss_start": True, "device": "cpu"}
    base = make(tmp_path / "b", rng_seed=1, memory_per_sample_bytes=0, **cpu)
    cand = make(tmp_path / "c", rng_seed=2, memory_per_sample_bytes=per_sample, **cpu)
    for folder in (base, cand):
        (folder / "env").mkdir()
        (folder / "env" / "e.json").write_text(json.dumps({"cpu_count": 2}))
    res = C.compare(base, cand, metrics=[METRICS["peak_memory_bytes"]])
    rows = rows_for(res, "peak_memory_bytes")
    assert len(rows) == len(SHAPES) and all(r.ratio == math.inf for r in rows)
    assert {r.verdict for r in rows} == {verdict}
    within = [r for r in rows if "within the counter's step, 512.00 KiB" in r.basis]
    assert len(within) == (len(rows) if verdict == "~" else 0)


def test_untested_rows_are_counted_apart_from_no_change(tmp_path):
    """3 seeds a side: memory and loss can never reach p < 0.05 over repeats, so their `~`
    is "untested", and the summary must not fold it into "no change"."""
    base = make(tmp_path / "b", seeds=(0, 1, 2), rng_seed=1)
    cand = make(tmp_path / "c", seeds=(0, 1, 2), rng_seed=1, memory_factor=1.5)
    res = C.compare(base, cand, metrics=parse_metrics(None))
    assert res.counts() == {"~": 6, "untested": 6}
    assert all(not r.tested for m in ("peak_memory_bytes", "final_loss") for r in rows_for(res, m))
    text = C.markdown(res)
    assert "Result: 6 ~ (no significant change), 6 untested (too few repeats" in text
    assert not res.regressed  # untested is not a failure either


def test_new_missing_and_status_regression(base, tmp_path):
    # candidate: drops B=4 (missing), adds B=64x1 (new), and both b=16 configurations
    # end oom (oom_above applies to the micro-batch: 16 > 8).
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


def test_same_folder_on_both_sides_matches_every_configuration(base):
    """Same folder on both sides: every configuration matches, nothing changes."""
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


def test_markdown_makes_no_markup_from_configuration_values(tmp_path):
    """Option values with markdown in them (an image, a link, emphasis, code) show as
    typed in compare's table, which lands in PR comments and the step summary."""
    planted = " ".join(PLANTED.values())
    for side, factor in (("b", 1.0), ("c", 0.5)):
        rows = [
            {
                "trial_key": f"k{s}{i}",
                "workload": "seed-mlp",
                "mode": "mbgd",
                "micro_batch_size": 4,
                "accumulation_steps": 1,
                "seed": s,
                "status": "ok",
                "samples_per_s": 100.0 * factor + s,
                "config_json": json.dumps({"workload": "seed-mlp", "seed": s, "note": note}),
            }
            for s in range(5)
            for i, note in enumerate((planted, "plain"))  # varies, so labels show it
        ]
        write_atomic(trials_table(rows), tmp_path / side / "trials" / "all.parquet")
    res = C.compare(tmp_path / "b", tmp_path / "c", metrics=[METRICS["samples_per_s"]])
    assert any(PLANTED["img"] in r.label for r in res.rows)
    doc = render_markdown(C.markdown(res))
    assert_no_markup_from(doc, PLANTED)
    assert assert_tables_render(doc) == 1
    assert res.regressed  # the rows are real comparisons, not errors


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


def edit_configs(folder: Path, edit) -> Path:
    """Rewrite every trial's config_json with ``edit(dict)`` and, as the code that wrote it
    would have, give the trial a new trial_key (steps rewritten to follow)."""
    for path in sorted((folder / "trials").glob("*.parquet")):
        t = pq.read_table(path)
        old = t["trial_key"][0].as_py()
        new = f"{old[:-1]}x"
        cfg = edit(json.loads(t["config_json"][0].as_py()))
        for name, value in (("config_json", json.dumps(cfg, sort_keys=True)), ("trial_key", new)):
            i = t.schema.get_field_index(name)
            t = t.set_column(i, name, pa.array([value], t.schema.field(name).type))
        write_atomic(t, folder / "trials" / f"{new}.parquet")
        path.unlink()
        steps = pq.read_table(folder / "steps" / f"{old}.parquet")
        i = steps.schema.get_field_index("trial_key")
        steps = steps.set_column(i, "trial_key", pa.array([new] * len(steps), pa.string()))
        write_atomic(steps, folder / "steps" / f"{new}.parquet")
        (folder / "steps" / f"{old}.parquet").unlink()
    return folder


@dataclass(frozen=True, kw_only=True)
class PinnedConfig(TrialConfig):
    """TrialConfig as it would be once a ``pin_memory`` field is added."""

    pin_memory: bool = False


def test_field_added_at_its_default_still_matches(base, tmp_path, monkeypatch):
    """New code adds ``pin_memory = False``: its results carry the key, the baseline's do
    not, and every trial_key changed; the configurations are still the same."""
    monkeypatch.setattr(sides, "TrialConfig", PinnedConfig)
    cand = edit_configs(make(tmp_path / "c", rng_seed=2), lambda d: {**d, "pin_memory": False})
    res = C.compare(base, cand, metrics=parse_metrics(None))
    assert not {"new", "missing"} & {r.verdict for r in res.rows}
    assert len(rows_for(res, "samples_per_s")) == 3
    (warning,) = [w for w in res.warnings if "no trial_key in common" in w]
    assert "config keys at their default added or removed" in warning  # not "seeds"
    # the warning is not an environment difference, and says so
    assert "environments differ" not in C.markdown(res)


def test_results_from_before_a_field_existed_match_current_ones(base, tmp_path):
    """A baseline written before ``grad_norm_every`` and ``data_path`` existed (no such
    keys) matches today's results, whose values for them are the defaults."""
    old = edit_configs(
        make(tmp_path / "old", rng_seed=1),
        lambda d: {k: v for k, v in d.items() if k not in ("grad_norm_every", "data_path")},
    )
    res = C.compare(old, base, metrics=[METRICS["samples_per_s"]])
    assert [r.verdict for r in res.rows] == ["~"] * 3


def test_a_key_off_its_default_still_tells_configurations_apart(base, tmp_path, monkeypatch):
    monkeypatch.setattr(sides, "TrialConfig", PinnedConfig)
    cand = edit_configs(make(tmp_path / "c", rng_seed=1), lambda d: {**d, "pin_memory": True})
    with pytest.raises(BenchError, match=r"no configuration in common.*pin_memory \(candidate"):
        C.compare(base, cand, metrics=[METRICS["samples_per_s"]])


def test_default_match_keeps_flags_and_counts_apart():
    d = C.config_defaults()
    assert d["workload_options"] == {} and d["grad_norm_every"] == 16 and d["seed"] == 0
    assert C.matching_config({"drop_last": 0, "momentum": 0, "lr": 0.5, "x": 1}, d) == {
        "drop_last": 0,  # 0 is not False: kept
        "lr": 0.5,
        "x": 1,  # unknown to TrialConfig: kept
    }


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


def test_cli_no_configuration_in_common_is_an_error(base, tmp_path):
    other = make(tmp_path / "other", shapes=((2, 1), (8, 1)), seeds=(0, 1))
    r = cli(str(base), str(other))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: no configuration in common")
    assert str(base) in lines[0] and str(other) in lines[0]
    assert "(15 trials, 3 configurations)" in lines[0]
    assert "(4 trials, 2 configurations)" in lines[0]


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
    from bench.report.compare.render import ratio_text

    assert ratio_text(0.8) == "0.800 (-20.0 %)"
    assert ratio_text(math.inf) == "∞"


def test_an_int_and_a_float_of_one_setting_match():
    # Results written before TrialConfig coerced float fields hold TOML's int 600.
    from bench.report.compare import config_defaults, matching_config
    from bench.report.prepare import config_id_of

    defaults = config_defaults()
    old = matching_config({"workload": "seed-mlp", "time_limit_s": 600, "lr": 1}, defaults)
    new = matching_config({"workload": "seed-mlp", "time_limit_s": 600.0, "lr": 1.0}, defaults)
    assert config_id_of(old) == config_id_of(new)
    flag = matching_config({"workload": "seed-mlp", "drop_last": 1}, defaults)
    assert flag["drop_last"] == 1  # not a float field: left alone


def set_trial_column(folder: Path, name: str, value_of) -> Path:
    """Rewrite each trial row's ``name`` to ``value_of(seed, config_json)``."""
    for path in sorted((folder / "trials").glob("*.parquet")):
        t = pq.read_table(path)
        value = value_of(t["seed"][0].as_py(), t["config_json"][0].as_py())
        i = t.schema.get_field_index(name)
        t = t.set_column(i, name, pa.array([value], t.schema.field(name).type))
        write_atomic(t, path)
    return folder


def test_data_fingerprints_that_differ_are_a_warning(tmp_path):
    b = set_trial_column(make(tmp_path / "b", rng_seed=1), "data_sha256", lambda s, c: "d0")
    same = set_trial_column(make(tmp_path / "s", rng_seed=2), "data_sha256", lambda s, c: "d0")
    res = C.compare(b, same, metrics=[METRICS["samples_per_s"]])
    assert not [w for w in res.warnings if "training data differ" in w]
    # Seeds 3 and 4 of every configuration trained on other data.
    other = set_trial_column(
        make(tmp_path / "o", rng_seed=2), "data_sha256", lambda s, c: "d1" if s >= 3 else "d0"
    )
    res = C.compare(b, other, metrics=[METRICS["samples_per_s"]])
    (warning,) = [w for w in res.warnings if "training data differ" in w]
    assert f"for {2 * len(SHAPES)} of {len(FIVE) * len(SHAPES)} trials" in warning
    assert "training data differ" in C.markdown(res)
    # Results written before the column existed are not compared: no warning.
    res = C.compare(make(tmp_path / "old", rng_seed=1), other, metrics=[METRICS["samples_per_s"]])
    assert not [w for w in res.warnings if "training data differ" in w]
