"""The results contract as users read it: polars and DuckDB over a whole folder.

One sweep whose trials end every way a trial can (ok, oom under a memory cap, diverged,
failed by an exception, SIGKILLed, stopped by its time limit), a ``bench run`` folder
and a ``bench oom`` probes file are written by the real commands, then read with
``polars.scan_parquet(glob).collect()`` and DuckDB ``SELECT * FROM read_parquet(glob)``
(no union_by_name): both must succeed, with every column in its declared type.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import oom, records, store
from bench.cli import main as bench_main
from bench.config import TrialConfig

polars = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")
pytest.importorskip("optuna")

from bench.sweep.runner import run_sweep  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402

# Every way a trial ends, in one sweep (workloads from tests/test_sweep_hooks.py).
SPEC = """\
# Test sweep: does every file of a kind have one schema, whatever its trial's status?
name = "contract"
device = "cpu"
memory_cap = "3GiB"
[workload]
name = "teacher-mlp"
[base]
samples = 128
batch_size = 32
timing_warmup_steps = 0
[budget]
epochs = 1
[[cases]]
lr = 0.05
[[cases]]
workload = "test_sweep_hooks:hog"
[[cases]]
lr = 1e12
[[cases]]
workload = "test_sweep_hooks:raiser"
[[cases]]
workload = "test_sweep_hooks:killer"
[[cases]]
lr = 0.01
batch_size = 1
time_limit_s = 1e-6
"""

POLARS = {
    pa.int64(): polars.Int64,
    pa.float64(): polars.Float64,
    pa.string(): polars.String,
    pa.bool_(): polars.Boolean,
    records.TIMESTAMP: polars.Datetime("us", "UTC"),
}
DUCKDB = {
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    records.TIMESTAMP: "TIMESTAMP WITH TIME ZONE",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contract")
    spec = root / "contract.toml"
    spec.write_text(SPEC)
    summary = run_sweep(
        load_spec(spec), results=root / "results", stream=io.StringIO(), tty=False, workers=1
    )
    assert summary.counts.done == 6
    code = bench_main(
        ["run", "--workload", "seed-mlp", "--samples", "64", "--batch-size", "16"]
        + ["--epochs", "1", "--device", "cpu", "--out", str(root / "run")]
    )
    assert code == 0
    return root


def polars_read(paths: list[Path]):
    return polars.scan_parquet([str(p) for p in paths]).collect()


def duckdb_read(paths: list[Path]):
    listed = ", ".join(f"'{p}'" for p in paths)
    return duckdb.sql(f"SELECT * FROM read_parquet([{listed}])")


def assert_declared_types(paths: list[Path], record: records.Record) -> tuple:
    """Both readers read ``paths`` as one table with exactly ``record``'s columns."""
    declared = records.columns(record)
    frame = polars_read(paths)
    assert frame.columns == list(declared)
    assert {c: frame.schema[c] for c in declared} == {c: POLARS[t] for c, t in declared.items()}
    relation = duckdb_read(paths)
    assert relation.columns == list(declared)
    got = dict(zip(relation.columns, map(str, relation.types), strict=True))
    assert got == {c: DUCKDB[t] for c, t in declared.items()}
    return frame, relation.fetchall()


def test_trials_of_every_ending_read_as_one_table(results):
    folder = results / "results" / "contract"
    paths = sorted((folder / "trials").glob("*.parquet")) + [results / "run" / "trial.parquet"]
    assert len(paths) == 7
    frame, rows = assert_declared_types(paths, records.TrialRecord)
    assert len(rows) == 7
    by = {(w, e or ""): s for w, e, s in frame.select("workload", "error", "status").rows()}
    statuses = sorted(by.values())
    assert statuses == ["diverged", "failed", "failed", "ok", "ok", "oom", "oom"]
    assert any("SIGKILL" in e and s == "oom" for (_, e), s in by.items())
    assert any("time limit" in e and s == "failed" for (_, e), s in by.items())
    assert frame["started_at"].null_count() == 0
    assert frame["schema_version"].unique().to_list() == [records.SCHEMA_VERSION]
    # Sweep bookkeeping is declared, so it is typed in every file, null for `bench run`.
    sweep = frame.filter(polars.col("sweep") == "contract")
    assert sweep["attempt"].to_list() == [1] * 6 and sweep["optuna_trial"].null_count() == 0
    run = frame.filter(polars.col("sweep").is_null())
    assert run["attempt"].to_list() == [None] and run["flops_per_sample"].to_list()[0] > 0


def test_steps_of_every_ending_read_as_one_table(results):
    folder = results / "results" / "contract"
    paths = sorted((folder / "steps").glob("*.parquet")) + [results / "run" / "steps.parquet"]
    assert len(paths) == 7
    frame, _ = assert_declared_types(paths, records.StepRecord)
    assert frame["trial_key"].n_unique() >= 5  # the killed trial and a fast OOM have none
    assert frame["step"].min() == 1


def test_oom_probes_read_as_one_table(tmp_path, capsys):
    p = argparse.ArgumentParser()
    oom.add_arguments(p)
    args = p.parse_args(
        ["--workload", "test_oom_helpers:build", "--option", "kill_at=3", "--samples", "16"]
        + ["--margin", "0", "--steps", "1", "--no-eval", "--results", str(tmp_path), "--json"]
        + ["--confirm", "1"]  # one run per b: the four rows below
    )
    assert oom.main(args) == 0
    capsys.readouterr()
    path = tmp_path / "oom" / "test_oom_helpers-build" / "probes.parquet"
    frame, rows = assert_declared_types([path], records.ProbeRecord)
    assert sorted(frame["outcome"].to_list()) == ["ok", "ok", "oom", "oom"]  # b = 1, 2, 4, 3
    assert frame["started_at"].null_count() == 0


def test_an_undeclared_column_is_refused_at_write_time(tmp_path):
    row = records.trial_row(trial_key="k", status="ok")
    with pytest.raises(records.RecordError, match="'flops_per_token'"):
        store.write_trial(tmp_path, {**row, "flops_per_token": 1.0}, _no_steps(), per_key=True)
    assert not list(tmp_path.rglob("*.parquet"))  # nothing written, steps included


def _no_steps():
    return pd.DataFrame(columns=list(records.columns(records.StepRecord)))


# -- the records module ----------------------------------------------------------------


@pytest.mark.parametrize("record", [records.TrialRecord, records.StepRecord, records.ProbeRecord])
def test_counts_are_int64_and_times_utc_timestamps(record):
    declared = records.columns(record)
    for name, typ in declared.items():
        if name.endswith(("_bytes", "_steps", "steps", "_seen", "batches", "_size")):
            assert typ == pa.int64(), name
        if name.endswith(("_s", "_ms", "_j", "loss", "_per_s")) or name in ("lr", "mfu"):
            assert typ == pa.float64(), name
    assert declared.get("started_at", records.TIMESTAMP) == records.TIMESTAMP
    if record is not records.StepRecord:
        assert declared["schema_version"] == pa.int64() and declared["extra"] == pa.string()


@pytest.mark.parametrize(
    "column, value, match",
    [
        ("samples_seen", "many", "'samples_seen'"),
        ("samples_seen", 3.5, "truncated"),
        ("device", 1.5, "'device': double values where string"),
        ("stopped_early", "yes", "'stopped_early'"),
        ("started_at", "yesterday", "not an ISO 8601 time"),
        ("started_at", "2026-11-29T10:00:00", "UTC offset"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(column, value, match):
    with pytest.raises(records.RecordError, match=match):
        records.trials_table([{"trial_key": "k", column: value}])


def test_values_that_fit_are_converted_and_nan_is_null():
    table = records.trials_table(
        [
            {
                "trial_key": "k",
                "samples_seen": np.float64(64.0),  # a pandas round trip makes counts float
                "final_loss": float("nan"),
                "lr": 1,
                "started_at": "2026-11-29T12:00:00+02:00",
            }
        ]
    )
    row = table.to_pylist()[0]
    assert row["samples_seen"] == 64 and row["final_loss"] is None and row["lr"] == 1.0
    assert row["started_at"] == dt.datetime(2026, 11, 29, 10, tzinfo=dt.UTC)
    assert row["schema_version"] == records.SCHEMA_VERSION


def test_an_unreported_trial_has_the_finished_trials_schema(tmp_path):
    config = TrialConfig(workload="seed-mlp", samples=64, batch_size=16, accumulation_steps=2)
    row = records.unreported_trial_row(
        config, status="oom", error="worker killed by SIGKILL", sweep="s"
    )
    assert list(row) == list(records.columns(records.TrialRecord))
    assert (row["status"], row["sweep"], row["effective_batch_size"]) == ("oom", "s", 32)
    assert row["optimizer_steps"] is None and row["started_at"].tzinfo is not None
    store.write_trial(tmp_path, row, _no_steps(), per_key=False)
    assert pq.read_table(tmp_path / "trial.parquet").schema.equals(records.trial_schema())
    assert pq.read_table(tmp_path / "steps.parquet").schema.equals(records.step_schema())


def test_extra_is_one_json_object():
    assert records.extra_json({}) is None
    assert json.loads(records.extra_json({"traceback": "x", "n": 2})) == {"n": 2, "traceback": "x"}
