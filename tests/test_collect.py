"""``bench report A B ...``: the folders that hosts of one sweep each wrote, read as one.

Unit tests split a synthetic sweep into two folders (one per "host"); the end-to-end
tests run two real coordinators of one sweep on one shared storage (a journal file, and
PostgreSQL) writing two folders, then report over both and over one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_sweep import counted_spec

from bench import records
from bench.errors import BenchError
from bench.report.collect import RESULT_COLUMNS, gather
from bench.report.hardware import split_by_hardware
from bench.report.synthetic import Synthetic, write_synthetic
from bench.store import load_results, write_atomic

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
}
SMALL = Synthetic(shapes=((1, 1), (4, 1), (16, 1), (16, 4)), seeds=(0, 1), sweep="multi")


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=240,
    )


@pytest.fixture
def report(monkeypatch, capsys):
    """``bench report ARGS`` in this process, figures left out (rendering them is what
    tests/test_report.py checks, at ~2 s a figure on a loaded machine): (exit code,
    stdout, stderr), as the command line gives them."""
    import argparse

    from bench.report.command import add_report_arguments, report_main

    monkeypatch.setattr("bench.report.build.render_figures", lambda report: [])

    def run(*argv: str, cwd: Path) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="bench report")
        add_report_arguments(parser)
        monkeypatch.chdir(cwd)
        try:
            code = report_main(parser.parse_args(list(argv)))
        except BenchError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            code = 2
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _split(tmp_path: Path, spec: Synthetic = SMALL) -> tuple[Path, Path, list[str], str]:
    """A synthetic sweep in two folders, ``a`` and ``b``, as two hosts would leave it,
    plus one trial in both (as a shared filesystem shows it): (a, b, keys, shared key)."""
    whole = tmp_path / "whole"
    write_synthetic(whole, spec)
    keys = sorted(p.stem for p in (whole / "trials").glob("*.parquet"))
    a, b = tmp_path / "a", tmp_path / "b"
    half = len(keys) // 2
    for folder, mine in ((a, keys[: half + 1]), (b, keys[half:])):
        for table in ("trials", "steps"):
            (folder / table).mkdir(parents=True)
            for key in mine:
                shutil.copy(whole / table / f"{key}.parquet", folder / table)
    return a, b, keys, keys[half]


def _edit_row(folder: Path, key: str, **values) -> None:
    """Rewrite one trial's row with ``values`` changed, through the records helpers."""
    path = folder / "trials" / f"{key}.parquet"
    row = pq.read_table(path).to_pylist()[0]
    row.update(values)
    write_atomic(records.trials_table([row]), path)


def test_two_folders_are_one_row_per_key_and_an_identical_repeat_collapses(tmp_path):
    a, b, keys, shared = _split(tmp_path)
    got = gather([a, b])
    trials = got.results.trials
    assert sorted(trials["trial_key"]) == keys  # every trial once, the shared one too
    assert got.duplicates == 1 and got.conflicts == []
    assert got.per_folder == {a: len(keys) // 2 + 1, b: len(keys) - len(keys) // 2 - 1}
    whole = load_results(tmp_path / "whole")
    # Each trial's steps come once, from the folder its row was taken from.
    assert len(got.results.steps) == len(whole.steps)
    assert (
        got.results.steps.groupby("trial_key")
        .size()
        .equals(whole.steps.groupby("trial_key").size())
    )
    assert got.sweep == "multi" and "trials from 2 folders" in got.notes()[0]
    assert gather([a, a]).results.trials["trial_key"].is_unique  # a folder given twice


def test_a_key_run_twice_is_a_conflict_settled_only_by_prefer(tmp_path):
    a, b, _, shared = _split(tmp_path)
    before = pq.read_table(a / "trials" / f"{shared}.parquet").to_pylist()[0]
    later = before["started_at"] + pd.Timedelta(hours=1)
    # Columns that do not describe the result may differ without a conflict: a path in
    # the error text or notes, another schema version's file, the spec hash in extra.
    _edit_row(b, shared, notes="log at /home/b/results", schema_version=1)
    assert gather([a, b]).conflicts == []
    _edit_row(b, shared, samples_per_s=before["samples_per_s"] * 2, started_at=later)
    got = gather([a, b])
    (conflict,) = got.conflicts
    assert conflict.key == shared and conflict.folders == (a, b)
    assert conflict.columns == ("samples_per_s", "started_at")
    assert conflict.line() == (
        f"trial {shared} differs between {a} and {b} (samples_per_s, started_at)"
    )
    row = lambda g: g.results.trials.set_index("trial_key").loc[shared]  # noqa: E731
    assert row(gather([a, b], prefer="newest"))["samples_per_s"] == before["samples_per_s"] * 2
    assert row(gather([a, b], prefer="first"))["samples_per_s"] == before["samples_per_s"]
    assert row(gather([b, a], prefer="first"))["samples_per_s"] == before["samples_per_s"] * 2
    assert set(RESULT_COLUMNS) >= {"status", "final_loss", "env_id", "device", "started_at"}


def test_cli_refuses_a_conflict_with_one_line_each_and_writes_nothing(tmp_path):
    a, b, keys, shared = _split(tmp_path)
    _edit_row(b, shared, final_loss=123.0)
    r = bench("report", str(a), str(b), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"bench: trial {shared} differs between {a} and {b} (final_loss)",
        "bench: error: 1 trial differs between the folders (listed above): two runs of one "
        "configuration; choose with --prefer newest|first",
    ]
    assert not (a / "report").exists() and not (b / "report").exists()


def test_prefer_settles_a_conflict_and_the_report_says_so(tmp_path, report):
    a, b, keys, shared = _split(tmp_path)
    _edit_row(b, shared, final_loss=123.0)
    code, out, err = report(str(a), str(b), "--prefer", "first", "--out", "out", cwd=tmp_path)
    assert code == 0, err
    assert f"trials from 2 folders: {a} ({len(keys) // 2 + 1}), {b} (" in out
    assert f"trial {shared} differs between {a} and {b} (final_loss); kept {a}" in out
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{len(keys)} trials" in out and "kept by --prefer first" in md


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"sweep": "other"}, "{a} holds sweep 'multi' and {b} sweep 'other': one report"),
        (
            {"extra": json.dumps({"spec_hash": "0123456789abcdef"})},
            "different specs of sweep 'multi' (spec hash aaaaaaaaaaaaaaaa in {a}, 0123456789abcdef in {b})",
        ),
    ],
)
def test_folders_of_different_sweeps_are_refused(tmp_path, change, needle):
    a, b, keys, _ = _split(tmp_path)
    for key in keys[: len(keys) // 2 + 1]:
        _edit_row(a, key, extra=json.dumps({"spec_hash": "aaaaaaaaaaaaaaaa"}))
    for key in keys[len(keys) // 2 :]:
        _edit_row(b, key, **change)
    with pytest.raises(BenchError) as err:
        gather([a, b])
    assert needle.format(a=a, b=b) in str(err.value) and "\n" not in str(err.value)


def _env(folder: Path, env_id: str, **fields) -> None:
    record = {"env_id": env_id, "cpu_model": "AMD EPYC", "cpu_usable_cores": 2}
    record.update({"packages": {"torch": "2.13.0+cpu"}, "git_commit": "abc", **fields})
    (folder / "env").mkdir(exist_ok=True)
    (folder / "env" / f"{env_id}.json").write_text(json.dumps(record))


def _on_cpu(folder: Path, keys: list[str], env_id: str) -> None:
    for key in keys:
        _edit_row(folder, key, device="cpu", env_id=env_id)


def test_hardware_is_never_pooled_but_another_host_of_one_kind_is(tmp_path):
    a, b, keys, shared = _split(tmp_path)
    mine_a, mine_b = keys[: len(keys) // 2 + 1], keys[len(keys) // 2 :]
    # Two hosts of one kind: env_id differs (it hashes the hostname), hardware does not.
    _on_cpu(a, mine_a, "env-host-a")
    _on_cpu(b, mine_b, "env-host-b")
    _env(a, "env-host-a", hostname_sha256="aaaa")
    _env(b, "env-host-b", hostname_sha256="bbbb", packages={"torch": "2.12.0+cpu"})
    got = gather([a, b], prefer="first")
    (part,) = split_by_hardware(got.results, got.folders)
    assert part.hardware == "CPU AMD EPYC (2 cores)" and len(part.results.trials) == len(keys)
    assert "torch 2.12.0+cpu / 2.13.0+cpu" in part.notes[0]
    # Another CPU model on host b: two parts, never one table.
    _env(b, "env-host-b", cpu_model="Intel Xeon", cpu_usable_cores=4)
    got = gather([a, b], prefer="first")
    parts = split_by_hardware(got.results, got.folders)
    assert [(p.hardware, len(p.results.trials)) for p in parts] == [
        ("CPU AMD EPYC (2 cores)", len(mine_a)),
        ("CPU Intel Xeon (4 cores)", len(mine_b) - 1),  # the shared key is a's (--prefer first)
    ]
    assert parts[1].slug == "cpu-intel-xeon-4-cores"
    assert set(parts[1].results.steps["trial_key"]) == set(parts[1].results.trials["trial_key"])


def test_the_report_is_one_per_kind_of_gpu(tmp_path, report):
    a, b, keys, shared = _split(tmp_path)
    for key in keys[len(keys) // 2 :]:
        _edit_row(b, key, device="NVIDIA A100-SXM4-80GB")
    code, out, err = report(str(a), str(b), "--prefer", "newest", cwd=tmp_path)
    assert code == 0, err
    assert "the trials ran on 2 kinds of hardware (cuda:0 (synthetic) (" in out
    for part in ("cuda-0-synthetic", "nvidia-a100-sxm4-80gb"):
        md = (a / "report" / part / "report.md").read_text()
        assert "trials that ran on" in md
    assert not (a / "report" / "report.md").exists()


def test_cross_check_counts_results_only_and_groups_by_host_and_folder():
    """What a study holds besides results: a trial that went back to the queue ("lost",
    "interrupted") is no result; a key run twice counts once, where it ran last."""
    import optuna

    from bench.report.study_check import cross_check
    from bench.sweep.trial_writer import TrialWriter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("bench_spec_hash", "h1")
    rows = [  # key, status, owner, folder
        ("k1", "ok", "gpu-a-1-aa", "/r/a"),
        ("k2", "lost", "gpu-b-2-bb", "/r/b"),
        ("k3", "failed", "gpu-b-2-bb", "/r/b"),
        ("k3", "ok", "gpu-b-3-cc", "/r/b"),  # --retry-failed, same host: one key
        ("k4", "interrupted", "gpu-c-4-dd", "/r/c"),
        ("k5", "oom", "gpu-c-4-dd", "/r/c"),
        ("k6", "ok", None, None),  # attributes a sweep of an older bench did not write
    ]
    for key, status, owner, folder in rows:
        t = study.ask()
        t.set_user_attr("bench_key", key)
        t.set_user_attr("bench_status", status)
        if owner:
            TrialWriter(storage).set_system_attr(t, "bench_owner", owner)  # as tickets do
            t.set_user_attr("bench_folder", folder)
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    assert cross_check(study, [("k1", 0), ("k2", 1), ("k4", 4), ("k7", None)], "h1") == [
        "3 trials finished on another host whose folder was not given: "
        "host not recorded (1: k6); gpu-b:/r/b (1: k3); gpu-c:/r/c (1: k5)",
        "3 trials of the folders not recorded in the study (a coordinator stopped between "
        "writing the row and recording it; the sweep runs them again)",
    ]
    rows = [("k1", 0), ("k3", 2), ("k5", 5), ("k6", 6)]  # k3's failed run, then retried
    assert cross_check(study, rows, None) == [
        "--storage: the 4 trials the study recorded are all in the folders given"
    ]
    rows = [("k1", 0), ("k3", 3), ("k5", 1), ("k6", 6)]  # k5: trial 1 is k2's, not k5's
    rows.append(("k2", 1))  # k2's row from before its trial was lost: this study's
    assert cross_check(study, rows, None) == [
        "1 trial of the folders not recorded in the study (a coordinator stopped between "
        "writing the row and recording it; the sweep runs them again)",
        "1 trial of the folders ran under another study than this one (their Optuna trial "
        "numbers are not this study's trials of their keys): is --storage the storage the "
        "sweep ran on?",
    ]
    with pytest.raises(BenchError, match="holds spec hash h1, the folders h2"):
        cross_check(study, [("k1", 0)], "h2")


# --- two coordinators of one sweep, one shared storage, two results folders -------------

N = 6


def _spec(tmp_path: Path, name: str, wait_s: float = 60.0) -> tuple[Path, Path]:
    """N points whose trials wait (``wait_s``) until both coordinators have started one."""
    return counted_spec(
        tmp_path, name, N, workload="collect_hooks:shared", options={"wait_s": wait_s}
    )


def _two_hosts(tmp_path: Path, name: str, storage: str) -> tuple[Path, Path]:
    """Two coordinators of sweep ``name`` on ``storage``, each with its own results
    folder (as two hosts have); returns the two sweep folders."""
    spec, log = _spec(tmp_path, name)
    procs = []
    for host in ("host-a", "host-b"):
        cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--workers", "1"]
        cmd += ["--results", str(tmp_path / host), "--storage", storage]
        procs.append(
            subprocess.Popen(
                cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    pids = {line.split()[1] for line in log.read_text().splitlines()}
    assert len(pids) == 2  # both coordinators ran trials
    return tmp_path / "host-a" / name, tmp_path / "host-b" / name


def _check_one_report_over_both(
    tmp_path: Path, given: Path, left_out: Path, storage: str, report
) -> None:
    """Both folders: every trial once. ``given`` alone: the trials of ``left_out`` are
    named, with the host and ``left_out`` as rsync takes them."""
    keys_given = set(load_results(given).trials["trial_key"])
    missing = sorted(load_results(left_out).trials["trial_key"])
    assert len(keys_given) + len(missing) == N and keys_given and missing
    assert not keys_given & set(missing)

    both = (str(given), str(left_out))
    code, out, err = report(*both, "--storage", storage, "--out", "both", cwd=tmp_path)
    assert code == 0, err
    assert f"--storage: the {N} trials the study recorded are all in the folders given" in out
    assert f"({N} configurations, {N} trials" in out  # every trial once

    code, out, err = report(str(given), "--storage", storage, "--out", "one", cwd=tmp_path)
    assert code == 0, err
    host = socket.gethostname()[:24]
    line = next(x for x in out.splitlines() if "finished on another host" in x)
    assert line.startswith(
        f"{len(missing)} trial{'s' if len(missing) > 1 else ''} finished on another host "
        f"whose folder was not given: {host}:{left_out.resolve()} ({len(missing)}: "
    )
    assert all(k in line for k in missing[:5])
    assert "finished on another host" in (tmp_path / "one" / "report.md").read_text()


def test_a_journal_shared_by_two_folders_names_the_folder_left_out(tmp_path, report):
    """One coordinator on a journal outside its results folder; half of its folder moved
    to a second one, as a second coordinator on that journal would have written it (two
    real coordinators: the PostgreSQL test below)."""
    import io

    from bench.sweep.runner import run_sweep
    from bench.sweep.spec import load_spec

    spec, _ = _spec(tmp_path, "twofold", wait_s=0.0)
    storage = f"journal:{tmp_path / 'shared.journal'}"
    kw = {"workers": 1, "storage": storage, "stream": io.StringIO(), "tty": False}
    run_sweep(load_spec(spec), results=tmp_path / "host-a", **kw)
    a, b = tmp_path / "host-a" / "twofold", tmp_path / "host-b" / "twofold"
    shutil.copytree(a / "env", b / "env")
    for path in sorted((a / "trials").glob("*.parquet"))[: N // 2]:
        for table in ("steps", "trials"):
            (b / table).mkdir(parents=True, exist_ok=True)
            (a / table / path.name).rename(b / table / path.name)
    # The study recorded every trial in a's folder: leaving a out names it.
    _check_one_report_over_both(tmp_path, b, a, storage, report)
    # A row the study never recorded (its coordinator died between the two writes).
    first = sorted((b / "trials").glob("*.parquet"))[0]
    _edit_row(b, first.stem, trial_key="f" * 16)
    first.rename(b / "trials" / f"{'f' * 16}.parquet")
    code, out, err = report(str(a), str(b), "--storage", storage, "--out", "more", cwd=tmp_path)
    assert code == 0, err
    assert "1 trial of the folders not recorded in the study" in out
    assert "1 trial finished on another host whose folder was not given" in out  # its key


@pytest.mark.slow
@pytest.mark.postgres
def test_two_coordinators_on_postgres_write_two_folders_one_report(tmp_path, postgres_url, report):
    name = f"hosts-{uuid.uuid4().hex[:8]}"  # a fresh study even on a shared server
    a, b = _two_hosts(tmp_path, name, postgres_url)
    _check_one_report_over_both(tmp_path, a, b, postgres_url, report)
