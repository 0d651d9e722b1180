"""bench.store: tail_loss (the end-of-run training loss reports and compare use, filled in
for results written before the column existed) and loading folders of any schema version."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import store
from bench.config import TrialConfig
from bench.errors import BenchError
from bench.trial import run_trial


def brute_tail(loss, samples, units, fraction):
    """By the definition, step by step from the end: take whole steps until the steps
    taken hold at least fraction of all samples (always the last one)."""
    need, taken, num, den = fraction * sum(samples), 0, 0.0, 0.0
    for value, n, u in zip(reversed(loss), reversed(samples), reversed(units), strict=True):
        if taken > 0 and taken >= need:
            break
        w = n if u is None else u
        num, den, taken = num + w * value, den + w, taken + n
    return num / den


def test_known_answers():
    # 5 % of 4 samples is less than one step: the last step alone.
    assert store.tail_loss([1, 2, 3, 4], [1, 1, 1, 1]) == 4.0
    # SGD over 100 samples: the last 5 steps.
    assert store.tail_loss(list(range(100)), [1] * 100) == pytest.approx(97.0)
    # Full-batch GD: every step holds all samples, so the last step.
    assert store.tail_loss([3.0, 2.0], [50, 50]) == 2.0
    # Half the samples: the last two steps, weighted by their tokens (10 and 20).
    assert store.tail_loss([1, 2, 3], [10, 10, 10], [5, 10, 20], fraction=0.5) == pytest.approx(
        (2 * 10 + 3 * 20) / 30
    )
    # Steps without a token count fall back to samples.
    assert store.tail_loss([1, 2], [50, 50], [None, None]) == 2.0


def test_nothing_or_a_diverged_tail_is_null():
    assert store.tail_loss([], []) is None
    assert store.tail_loss([1.0, math.nan], [1, 1]) is None
    assert store.tail_loss([1.0, math.inf], [1, 1]) is None
    # A NaN before the tail does not matter.
    assert store.tail_loss([math.nan] + [1.0] * 99, [1] * 100) == 1.0


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0, 10, allow_nan=False),
            st.integers(1, 64),
            st.one_of(st.none(), st.integers(1, 500)),
        ),
        min_size=1,
        max_size=60,
    ),
    fraction=st.floats(0.001, 1.0),
)
def test_matches_the_definition(steps, fraction):
    loss, samples, units = (list(c) for c in zip(*steps, strict=True))
    assert store.tail_loss(loss, samples, units, fraction=fraction) == pytest.approx(
        brute_tail(loss, samples, units, fraction), rel=1e-9, abs=1e-12
    )


def test_trial_rows_carry_it_and_sgd_averages_over_5_percent_of_samples():
    config = TrialConfig(workload="seed-mlp", samples=200, mode="sgd", epochs=1, seed=3)
    result = run_trial(config)
    row, steps = result.trial, result.steps
    assert row["status"] == "ok" and len(steps) == 200
    assert row["tail_loss"] == pytest.approx(steps["loss"].iloc[-10:].mean(), rel=1e-12)
    assert row["final_loss"] == steps["loss"].iloc[-1]


def test_older_results_get_it_from_their_steps(tmp_path):
    config = TrialConfig(workload="seed-mlp", samples=100, batch_size=10, epochs=2, seed=1)
    result = run_trial(config)
    expected = result.trial["tail_loss"]
    assert expected is not None
    old = {k: v for k, v in result.trial.items() if k != "tail_loss"}  # as written before
    store.write_atomic(store.trials_table([old]), tmp_path / "trial.parquet")
    store.write_atomic(store.steps_table(result.steps), tmp_path / "steps.parquet")
    loaded = store.load_results(tmp_path)
    assert loaded.trials["tail_loss"].iloc[0] == pytest.approx(expected, rel=1e-12)
    # A value that is there is kept, not recomputed.
    store.write_atomic(
        store.trials_table([{**result.trial, "tail_loss": 123.0}]),
        tmp_path / "trial.parquet",
    )
    assert store.load_results(tmp_path).trials["tail_loss"].iloc[0] == 123.0
    assert np.isfinite(loaded.trials["final_loss"].iloc[0])


def test_data_fingerprint_follows_the_data_not_the_trial_seed():
    from bench.workloads import build_workload
    from bench.workloads.base import data_sha256

    rows = {
        (seed, data_seed): run_trial(
            TrialConfig(
                workload="seed-mlp",
                samples=64,
                batch_size=32,
                epochs=1,
                seed=seed,
                workload_options={"data_seed": data_seed, "val_samples": 16},
            )
        ).trial["data_sha256"]
        for seed, data_seed in ((0, 0), (1, 0), (0, 1))
    }
    assert rows[(0, 0)] == rows[(1, 0)] != rows[(0, 1)]
    assert len(rows[(0, 0)]) == 16
    # Every tensor counts: one changed label changes it.
    w = build_workload("seed-mlp", samples=64, options={"val_samples": 16})
    before = data_sha256(w)
    w.train[1][5] += 1
    assert data_sha256(w) != before


def test_filling_reads_no_steps_when_every_trial_has_it():
    # Every load of new results goes through here: with nothing to fill, the steps table
    # (10 M rows at scale: a set of its keys alone took ~5 s) must not be touched.
    import pandas as pd

    trials = pd.DataFrame(
        {"trial_key": ["a", "b"], "tail_loss": [1.0, 2.0], "final_loss": [1.0, 2.0]}
    )
    assert store._fill_tail_loss(trials, pd.DataFrame()) is trials
    # Nor for a trial that never had a finite last loss (an OOM before its first step).
    oom = pd.DataFrame(
        {"trial_key": ["a", "o"], "tail_loss": [1.0, None], "final_loss": [1.0, None]}
    )
    assert store._fill_tail_loss(oom, pd.DataFrame()) is oom
    # One to fill: only its steps are read, and a trial without steps stays null.
    steps = pd.DataFrame(
        {
            "trial_key": ["c", "c", "a"],
            "step": [2, 1, 1],
            "loss": [4.0, 9.0, 7.0],
            "samples": [1, 1, 1],
            "tokens": [None, None, None],
        }
    )
    trials = pd.DataFrame(
        {
            "trial_key": ["a", "c", "d"],
            "tail_loss": [1.0, None, None],
            "final_loss": [1.0, 4.0, 5.0],
        }
    )
    filled = store._fill_tail_loss(trials, steps)
    assert filled["tail_loss"].tolist()[:2] == [1.0, 4.0] and math.isnan(filled["tail_loss"][2])


def _v1_folder(folder, result) -> dict:
    """A sweep folder as schema version 1 wrote it: started_at as ISO text, no
    tail_loss, flops_per_sample outside the declared columns (null-typed in a trial that
    failed), sweep bookkeeping in ad-hoc columns, and no extra column."""
    import pyarrow as pa

    ok = {k: v for k, v in result.trial.items() if k not in ("tail_loss", "extra")}
    ok.update(started_at="2026-11-29T10:00:00+00:00", schema_version=1, attempt=1)
    failed = {
        "trial_key": "f" * 16,
        "workload": "seed-mlp",
        "status": "failed",
        "error": "RuntimeError: boom",
        "flops_per_sample": None,
        "started_at": "2026-11-29T11:00:00+00:00",
        "schema_version": 1,
    }
    for row in (ok, failed):
        table = pa.Table.from_pylist([row])  # types as inferred, as ad-hoc columns were
        store.write_atomic(table, folder / "trials" / f"{row['trial_key']}.parquet")
    steps = pa.Table.from_pandas(result.steps, preserve_index=False)
    store.write_atomic(steps, folder / "steps" / f"{ok['trial_key']}.parquet")
    return ok


def test_a_version_1_folder_loads_as_the_current_schema(tmp_path):
    import pandas as pd

    config = TrialConfig(workload="seed-mlp", samples=100, batch_size=10, epochs=2, seed=1)
    result = run_trial(config)
    ok = _v1_folder(tmp_path, result)
    assert pd.api.types.is_string_dtype(
        pd.read_parquet(tmp_path / "trials" / f"{ok['trial_key']}.parquet")["started_at"]
    )
    loaded = store.load_results(tmp_path)
    trials = loaded.trials.set_index("status")
    # Declared columns first, in order; the ad-hoc ones the folder holds follow.
    assert list(loaded.trials.columns[: len(store.TRIAL_COLUMNS)]) == list(store.TRIAL_COLUMNS)
    assert str(loaded.trials["started_at"].dtype) == "datetime64[us, UTC]"
    assert trials.loc["ok", "started_at"] == pd.Timestamp("2026-11-29T10:00:00Z")
    assert trials.loc["failed", "started_at"] == pd.Timestamp("2026-11-29T11:00:00Z")
    assert list(loaded.trials["schema_version"]) == [1, 1]
    # Missing columns read as null; tail_loss filled from the steps, as before.
    assert trials["extra"].isna().all() and pd.isna(trials.loc["failed", "final_loss"])
    assert trials.loc["ok", "tail_loss"] == pytest.approx(result.trial["tail_loss"], rel=1e-12)
    assert pd.isna(trials.loc["failed", "tail_loss"])
    assert trials.loc["ok", "flops_per_sample"] > 0 and pd.isna(
        trials.loc["failed", "flops_per_sample"]
    )
    assert list(loaded.steps["step"]) == list(range(1, 21))


def test_a_folder_of_both_versions_loads_and_new_rows_are_written_as_version_2(tmp_path):
    import pyarrow.parquet as pq

    from bench import records

    config = TrialConfig(workload="seed-mlp", samples=64, batch_size=16, epochs=1, seed=2)
    old = run_trial(config)
    _v1_folder(tmp_path, old)
    new = run_trial(config.replace(seed=3))
    store.write_trial(tmp_path, new.trial, new.steps, per_key=True)
    written = pq.read_table(tmp_path / "trials" / f"{new.trial['trial_key']}.parquet")
    assert written.schema.equals(records.trial_schema())
    loaded = store.load_results(tmp_path).trials.set_index("trial_key")
    assert sorted(loaded["schema_version"]) == [1, 1, records.SCHEMA_VERSION]
    assert loaded.loc[new.trial["trial_key"], "started_at"] == new.trial["started_at"]
    assert loaded["started_at"].notna().all()


def test_a_file_that_breaks_the_contract_is_named(tmp_path):
    import pyarrow as pa

    table = pa.table({"trial_key": ["k"], "samples_seen": ["many"]})
    store.write_atomic(table, tmp_path / "trials" / "k.parquet")
    with pytest.raises(BenchError, match=r"k\.parquet.*'samples_seen'"):
        store.load_results(tmp_path)
