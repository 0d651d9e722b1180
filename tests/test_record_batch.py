"""Recording a batch of trials at once: parquet files of a batch written together
(bench.store.write_trials), the study's records of a batch in one journal append
(WholeRecordJournal.batched), and what a kill -9 in either leaves: each member once,
every file whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

optuna = pytest.importorskip("optuna")

from bench import store  # noqa: E402
from bench.sweep.journal import open_journal  # noqa: E402
from bench.sweep.trial_writer import TrialWriter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _study(tmp_path: Path):
    storage = open_journal(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=storage)
    return study, TrialWriter(storage)


def _reloaded(tmp_path: Path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    return optuna.load_study(study_name="s", storage=storage).get_trials()


def test_a_batch_reaches_the_journal_in_one_append_at_its_end(tmp_path):
    study, writer = _study(tmp_path)
    trials = [study.ask() for _ in range(3)]
    journal = tmp_path / "optuna.journal"
    size = journal.stat().st_size
    with writer.batched():
        for i, t in enumerate(trials):
            writer.set_user_attr(t, "bench_status", "ok")
            writer.set_user_attr(t, "bench_row", {"i": i})
            study.tell(t, float(i))
        assert journal.stat().st_size == size  # nothing yet: one append at the end
    got = _reloaded(tmp_path)
    assert [t.state.name for t in got] == ["COMPLETE"] * 3
    assert [t.user_attrs["bench_row"]["i"] for t in got] == [0, 1, 2]
    assert [t.value for t in got] == [0.0, 1.0, 2.0]


def test_a_batch_is_appended_when_its_block_raises_and_other_threads_write_at_once(tmp_path):
    study, writer = _study(tmp_path)
    a, b = study.ask(), study.ask()
    journal = tmp_path / "optuna.journal"
    with pytest.raises(RuntimeError), writer.batched():
        writer.set_user_attr(a, "bench_status", "ok")
        size = journal.stat().st_size
        other = threading.Thread(target=writer.set_user_attr, args=(b, "bench_status", "lost"))
        other.start()
        other.join()
        assert journal.stat().st_size > size  # the other thread's record is not held back
        raise RuntimeError("stop")
    got = {t.number: t.user_attrs.get("bench_status") for t in _reloaded(tmp_path)}
    assert got == {0: "ok", 1: "lost"}


def _trial(key: str, steps: int) -> tuple[dict, pd.DataFrame]:
    row = {"trial_key": key, "sweep": "s", "status": "ok", "final_loss": 0.5}
    frame = pd.DataFrame(
        {
            "trial_key": key,
            "step": range(1, steps + 1),
            "loss": [1.0 / s for s in range(1, steps + 1)],
        }
    )
    return row, frame


def test_write_trials_writes_what_write_trial_writes(tmp_path):
    batch = [_trial(f"k{i}", 5 + i) for i in range(4)]
    store.write_trials(tmp_path / "batch", batch)
    for row, steps in batch:
        store.write_trial(tmp_path / "one", row, steps, per_key=True)
    for sub in ("trials", "steps"):
        names = sorted(p.name for p in (tmp_path / "batch" / sub).iterdir())
        assert names == [f"k{i}.parquet" for i in range(4)]  # no temporary file left
        for name in names:
            assert pq.read_table(tmp_path / "batch" / sub / name).equals(
                pq.read_table(tmp_path / "one" / sub / name)
            )


def test_write_trials_that_fails_part_way_writes_no_file(tmp_path, monkeypatch):
    calls = []
    real = pq.write_table

    def fail_third(table, where, **kw):
        calls.append(where)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", fail_third)
    from bench.failures import DiskFull

    with pytest.raises(DiskFull):
        store.write_trials(tmp_path, [_trial(f"k{i}", 3) for i in range(3)])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# A sweep of 12 stacked members whose coordinator kills its whole process group at the
# 7th rename of its recording batch.
KILLER = """
import os, signal, sys
from pathlib import Path
import bench.store
from bench.sweep.runner import run_sweep
from bench.sweep.spec import load_spec

where = sys.argv[3]
renames = []
real_replace = os.replace

def replace(src, dst):
    real_replace(src, dst)
    renames.append(dst)
    if where == "rename" and str(dst).endswith(".parquet") and len(renames) == 7:
        os.killpg(0, signal.SIGKILL)  # coordinator, forkserver and worker at once

bench.store.os.replace = replace
run_sweep(load_spec(Path(sys.argv[1])), workers=1, threads=1, results=Path(sys.argv[2]))
"""

SPEC = """\
# Test sweep: is a stack recorded once across a kill -9 in its recording?
name = "rb"
device = "cpu"
seeds = 4
execution = "stacked"
max_stack = 12

[workload]
name = "seed-mlp"
options = { val_samples = 64 }

[base]
samples = 128
batch_size = 32
epochs = 1

[grid]
lr = [0.01, 0.05, 0.1]
"""


@pytest.mark.slow  # two sweeps: ~13 s under load
def test_kill_9_while_recording_a_stack_then_resume_records_each_member_once(tmp_path):
    # Killed in the renames. (Killed in the journal append, a sweep resumes the same way
    # but first waits out Optuna's 30 s grace for the lock file the dead writer held:
    # the next test checks what such a kill leaves in the journal.)
    where = "rename"
    from bench.store import load_results
    from bench.sweep.runner import run_sweep
    from bench.sweep.spec import load_spec

    spec = tmp_path / "rb.toml"
    spec.write_text(SPEC)
    results, folder = tmp_path / "r", tmp_path / "r" / "rb"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(spec), str(results), where],
        env=ENV, cwd=REPO, start_new_session=True, capture_output=True, timeout=240,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = {p.stem for p in (folder / "trials").glob("*.parquet")}
    assert 0 < len(before) < 12
    for p in folder.glob("*/*.parquet"):
        pq.read_table(p)  # whole: a kill leaves temporary files, never a cut-short parquet
    assert not any(t.state.name == "COMPLETE" for t in _journal_trials(folder))

    summary = run_sweep(load_spec(spec), workers=1, threads=1, results=results)
    assert summary.exit_code == 0
    keys = sorted(p.key for p in load_spec(spec).points)
    r = load_results(folder)
    assert sorted(r.trials["trial_key"]) == keys  # one row per key
    assert not r.steps.duplicated(["trial_key", "step"]).any()
    assert (r.steps.groupby("trial_key").size() == 4).all()  # 128 / 32 steps each
    told = Counter(
        t.user_attrs["bench_key"] for t in _journal_trials(folder) if t.state.name == "COMPLETE"
    )
    assert sorted(told) == keys and set(told.values()) == {1}
    for p in folder.glob("*/*.parquet"):
        pq.read_table(p)


def test_a_batch_cut_short_in_its_append_keeps_its_whole_records(tmp_path, monkeypatch):
    import bench.sweep.journal as journal

    study, writer = _study(tmp_path)
    trials = [study.ask() for _ in range(4)]
    real = journal.append_whole

    class Killed(BaseException):
        pass

    def cut_short(fd, data, path):  # what a kill -9 in the write leaves
        os.write(fd, data[: len(data) // 2 + 7])  # past a record's end (4 alike records)
        raise Killed

    monkeypatch.setattr(journal, "append_whole", cut_short)
    with pytest.raises(Killed), writer.batched():
        for i, t in enumerate(trials):
            writer.set_user_attr(t, "bench_status", "ok")
            study.tell(t, float(i))
    monkeypatch.setattr(journal, "append_whole", real)
    assert not (tmp_path / "optuna.journal").read_bytes().endswith(b"\n")
    storage = open_journal(tmp_path / "optuna.journal")  # a fresh start
    told = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).get_trials()]
    # The first half of the batch, in order: the first trials told, the rest RUNNING (lost).
    assert told == sorted(told) and told[0] == "COMPLETE" and told[-1] == "RUNNING"
    writer = TrialWriter(storage)
    writer.set_user_attr(storage.get_all_trials(0)[-1], "bench_status", "lost")  # appends
    assert (tmp_path / "optuna.journal").read_bytes().endswith(b"\n")
    assert [p.name for p in tmp_path.glob("optuna.journal.torn-*")]  # the cut piece kept
    assert _reloaded(tmp_path)[-1].user_attrs["bench_status"] == "lost"


def _journal_trials(folder: Path) -> list:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal"))
    )
    return optuna.load_study(study_name="rb", storage=storage).get_trials()
