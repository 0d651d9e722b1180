"""Faults on one machine, each broken for real: a full disk (a small tmpfs), Ctrl-C and
SIGTERM to a sweep run as a background job, signals to one worker, temporary files a
kill left behind, and a trial that calls ``os._exit(137)``.

What must hold after each: nothing lost, nothing recorded twice, no interrupt recorded
as a trial's result, one line instead of a traceback, and the same command resumes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")

from test_sweep import (  # noqa: E402
    ENV,
    REPO,
    _wait_for,
    counted_spec,
    result_trials_per_key,
    run,
    runs_per_tag,
)

from bench.errors import BenchError  # noqa: E402
from bench.failures import status_for_exit  # noqa: E402
from bench.store import load_results  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402

# -- a small file system to fill -------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 4 MiB tmpfs: ENOSPC for real, at a size a test can fill in milliseconds."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path, *, leave: int = 0) -> Path:
    """Write a filler file until ``leave`` bytes are free (0: until ENOSPC)."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    todo = max(0, stat.f_bavail * stat.f_frsize - leave)
    chunk = b"\xff" * 65536
    with open(filler, "ab", buffering=0) as f:
        while leave == 0 or todo > 0:
            try:
                todo -= f.write(chunk[: min(len(chunk), todo)] if leave else chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def journal_loads(path: Path, study: str) -> list:
    """The study's trials as a fresh process reads the journal, with Optuna's own backend."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def _new_study(folder: Path, name: str = "s"):
    from bench.sweep.storage import open_storage

    handle = open_storage(None, folder, name)
    study = optuna.create_study(study_name=name, storage=handle.storage)
    return handle, study


# -- item 1: a full disk -----------------------------------------------------------------


def test_a_torn_last_journal_record_is_set_aside_and_later_appends_stay_readable(tmp_path, capsys):
    from bench.sweep.storage import open_storage

    handle, study = _new_study(tmp_path)
    study.set_user_attr("before", 1)
    handle.coordination.close()
    journal = tmp_path / "optuna.journal"
    torn = b'{"op_code":5,"worker_id":"w","study_id":0,"user_att'
    with open(journal, "ab") as f:
        f.write(torn)  # what a kill -9 or ENOSPC in the middle of an append leaves
    handle = open_storage(None, tmp_path, "s")
    study = optuna.load_study(study_name="s", storage=handle.storage)
    study.set_user_attr("after", 2)
    handle.coordination.close()
    (kept,) = tmp_path.glob("optuna.journal.torn-*")
    assert kept.read_bytes() == torn
    err = capsys.readouterr().err
    assert f"set aside in {kept}" in err and len(err.strip().splitlines()) == 1
    journal_loads(journal, "s")  # Optuna's own reader: no JSONDecodeError
    attrs = optuna.load_study(
        study_name="s",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
    ).user_attrs
    assert attrs == {"before": 1, "after": 2}


@pytest.mark.parametrize("appended", [1, 2])
def test_a_journal_with_a_torn_record_inside_is_repaired_on_open(tmp_path, capsys, appended):
    """The state a full disk left before whole-record appends: a torn record, then the
    next run's records appended to the same line. With one record after it Optuna loads
    the journal and breaks at the next append; with two it cannot load it at all."""
    from bench.sweep.storage import open_storage

    handle, study = _new_study(tmp_path)
    handle.coordination.close()
    journal = tmp_path / "optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    whole = b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"kept":3}}\n'
    torn = b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"lo'
    records = [whole, whole.replace(b"kept", b"also")][:appended]
    journal.write_bytes(b"".join(lines) + torn + b"".join(records))
    if appended == 2:
        with pytest.raises(ValueError):  # json.JSONDecodeError: the study is dead to Optuna
            journal_loads(journal, "s")
    handle = open_storage(None, tmp_path, "s")
    study = optuna.load_study(study_name="s", storage=handle.storage)
    study.set_user_attr("later", 4)
    handle.coordination.close()
    expected = {"kept": 3, "also": 3}
    if appended == 1:
        del expected["also"]
    assert study.user_attrs == {**expected, "later": 4}
    (kept,) = tmp_path.glob("optuna.journal.torn-*")
    assert kept.read_bytes() == torn
    assert "set aside" in capsys.readouterr().err
    journal_loads(journal, "s")


def test_enospc_in_a_journal_append_writes_no_partial_record(small_fs):
    handle, study = _new_study(small_fs)
    journal = small_fs / "optuna.journal"
    fill(small_fs)
    size = journal.stat().st_size
    # Larger than what is left of the journal's last page: the write starts, then fails.
    with pytest.raises(BenchError, match=f"disk full at {journal}"):
        study.set_user_attr("row", "x" * 20000)
    assert journal.stat().st_size == size and journal.read_bytes().endswith(b"\n")
    (small_fs / "filler").unlink()
    study.set_user_attr("row", "y")
    handle.coordination.close()
    assert journal_loads(journal, "s") == [] and not list(small_fs.glob("*.torn-*"))


def test_enospc_writing_parquet_is_one_line_and_leaves_no_temporary_file(small_fs):
    import pandas as pd

    from bench.config import TrialConfig
    from bench.procs import unreported_trial_result
    from bench.store import write_atomic, write_trial

    config = TrialConfig(samples=8, batch_size=4)
    result = unreported_trial_result(config, status="failed", error="")
    steps = pd.DataFrame({"step": list(range(1, 20001)), "loss": [0.5] * 20000})
    steps.insert(0, "trial_key", result.trial["trial_key"])
    fill(small_fs, leave=8192)
    with pytest.raises(BenchError) as caught:
        write_trial(small_fs / "r", result.trial, steps, per_key=True)
    text = str(caught.value)
    assert text.startswith(f"disk full at {small_fs / 'r' / 'steps'}") and "\n" not in text
    assert caught.value.exit_code == 75
    assert not list(small_fs.rglob("*.tmp")) and not list(small_fs.rglob("*.parquet"))
    import pyarrow as pa

    with pytest.raises(BenchError):  # the same through the bare table writer
        write_atomic(pa.table({"x": list(range(100000))}), small_fs / "t.parquet")
    assert not list(small_fs.rglob("*.tmp"))


@pytest.mark.slow
def test_a_sweep_into_a_full_disk_stops_with_one_line_and_the_same_command_resumes(small_fs):
    n = 30
    spec, log = counted_spec(small_fs.parent, "full", n)
    results = small_fs / "r"
    cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--results", str(results)]
    filler = fill(small_fs, leave=64 * 1024)
    p = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 75, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bench: error: disk full at {results / 'full'}"), p.stderr[-3000:]
    assert "re-run the same command" in last
    done_before = len(list((results / "full" / "trials").glob("*.parquet")))
    assert done_before < n
    filler.unlink()
    p = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    keys = sorted(pt.key for pt in load_spec(spec).points)
    assert sorted(load_results(results / "full").trials["trial_key"]) == keys
    per_key = result_trials_per_key(results / "full" / "optuna.journal", "full")
    assert sorted(per_key) == keys and set(per_key.values()) == {1}
    assert not list(results.rglob(".*.tmp"))
    assert set(runs_per_tag(log)) == set(range(n))


# -- item 4: Ctrl-C and SIGTERM ------------------------------------------------------------


def _no_failures(folder: Path, sweep: str) -> None:
    """No trial row and no Optuna trial says an interrupt was a result."""
    if (folder / "trials").exists():
        statuses = set(load_results(folder).trials["status"])
        assert statuses <= {"ok"}, statuses
    attrs = [t.user_attrs for t in journal_loads(folder / "optuna.journal", sweep)]
    assert not [a for a in attrs if a.get("bench_status") == "failed"], attrs


def _resume_completes(cmd: list[str], spec: Path, folder: Path, sweep: str) -> None:
    p = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    keys = sorted(pt.key for pt in load_spec(spec).points)
    r = load_results(folder).trials
    assert sorted(r["trial_key"]) == keys and set(r["status"]) == {"ok"}
    per_key = result_trials_per_key(folder / "optuna.journal", sweep)
    assert sorted(per_key) == keys and set(per_key.values()) == {1}


@pytest.mark.slow
def test_ctrl_c_to_a_background_sweep_records_no_failure_and_the_same_command_resumes(
    tmp_path,
):
    # A background job of a non-interactive shell starts with SIGINT ignored; the
    # group's Ctrl-C then reaches the workers but not, unless it says so, the coordinator.
    spec, log = counted_spec(tmp_path, "bgint", 6, delay=4.0)
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--workers", "2"]
    cmd += ["--results", str(results)]
    shell = subprocess.Popen(
        # The shell itself ignores the Ctrl-C once the job is started (as a login shell
        # does), so its exit status is the sweep's.
        ["bash", "-c", " ".join(cmd) + ' & job=$!; trap "" INT; wait $job'],
        env=ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for(lambda: sum(runs_per_tag(log).values()) >= 2, 180)  # both workers training
    os.killpg(shell.pid, signal.SIGINT)
    _, err = shell.communicate(timeout=60)
    assert shell.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "re-run the same command to resume" in err
    assert "2 trial(s) that were running go back to the queue" in err
    _no_failures(results / "bgint", "bgint")
    _resume_completes(cmd, spec, results / "bgint", "bgint")


@pytest.mark.slow
def test_sigterm_to_a_sweep_records_no_failure_and_the_same_command_resumes(tmp_path):
    spec, log = counted_spec(tmp_path, "term", 6, delay=4.0)
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--workers", "2"]
    cmd += ["--results", str(results)]
    p = subprocess.Popen(
        cmd,
        env=ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for(lambda: sum(runs_per_tag(log).values()) >= 2, 180)
    os.killpg(p.pid, signal.SIGTERM)  # coordinator, forkserver and workers at once
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "re-run the same command to resume" in err
    _no_failures(results / "term", "term")
    _resume_completes(cmd, spec, results / "term", "term")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_to_one_worker_puts_its_trial_back_in_the_queue(tmp_path, signal_name):
    from bench.sweep.pool import WorkerPool
    from bench.sweep.tickets import Job

    spec_path, _ = counted_spec(tmp_path, "onesig", 1)
    spec = load_spec(spec_path)
    lines: list[str] = []
    pool = WorkerPool(spec, folder=tmp_path / "r", owner="me", log=lines.append)
    pool.start([{"CUDA_VISIBLE_DEVICES": ""}], threads=1)
    try:
        deadline = time.monotonic() + 120
        while not pool.idle():
            assert pool.wait(0.1) == [] and time.monotonic() < deadline, "no worker ready"
        (w,) = pool.idle()
        first_pid = w.child.pid
        config = spec.points[0].config.replace(
            workload="test_sweep_hooks:signaller",
            workload_options={"signal_name": signal_name},
        )
        job = Job(SimpleNamespace(number=3), config, config.trial_key, 1)
        assert pool.dispatch(w, job)
        deadline = time.monotonic() + 60
        while not pool.backlog:
            assert pool.wait(0.1) == [], "an interrupt was taken for the trial's result"
            assert time.monotonic() < deadline, "the interrupted trial did not come back"
        assert pool.backlog == [job] and w.job is None and w.child.pid != first_pid
        assert "trial 3 was interrupted" in "\n".join(lines)
    finally:
        pool.stop()


def test_a_signal_outside_the_loop_still_stops_the_sweep_cleanly(tmp_path):
    """SIGTERM before the workers are up (here: as the spec is opened) is honoured at the
    first chance, with the exit code of that signal, and leaves nothing running."""
    from bench.sweep import runner

    spec_path, log = counted_spec(tmp_path, "early", 2)
    real_open = runner.SweepRunner._open

    def open_then_signal(self):
        counts = real_open(self)
        os.kill(os.getpid(), signal.SIGTERM)
        return counts

    def outside(signum, frame):  # the test's own handler, while no sweep runs
        raise AssertionError("the sweep did not handle its SIGTERM")

    runner.SweepRunner._open = open_then_signal
    before = signal.signal(signal.SIGTERM, outside)
    try:
        summary, out = run(spec_path, tmp_path / "r")
        assert signal.getsignal(signal.SIGTERM) is outside  # put back after the run
    finally:
        runner.SweepRunner._open = real_open
        signal.signal(signal.SIGTERM, before)
    assert summary.exit_code == 143 and summary.ran_here == 0, out
    assert "re-run the same command to resume" in out
    assert not log.exists()
    summary, _ = run(spec_path, tmp_path / "r")
    assert summary.exit_code == 0 and runs_per_tag(log) == Counter({0: 1, 1: 1})


# -- item 8: temporary files, exit code 137 ----------------------------------------------


def _orphan(folder: Path, sub: str, name: str, age_s: float) -> Path:
    path = folder / sub / f".{name}.parquet.x1y2z3.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1 half a file")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_orphaned_temporary_files_are_removed_when_a_sweep_starts(tmp_path):
    spec_path, _ = counted_spec(tmp_path, "orphans", 1)
    folder = tmp_path / "r" / "orphans"
    fresh = [_orphan(folder, sub, "a" * 16, age_s=5) for sub in (".", "trials", "steps", "env")]
    summary, out = run(spec_path, tmp_path / "r")
    assert summary.exit_code == 0
    assert not any(p.exists() for p in fresh) and not list(folder.rglob("*.tmp"))
    assert "removed 4 temporary file(s) that no running writer owns" in out


def test_with_another_coordinator_alive_only_old_temporary_files_are_removed(tmp_path):
    from bench.sweep.storage import FileCoordination

    spec_path, _ = counted_spec(tmp_path, "busy", 1)
    folder = tmp_path / "r" / "busy"
    folder.mkdir(parents=True)
    other = FileCoordination(folder, "busy")
    other.start()  # a live coordinator on the same folder: its writes may be in flight
    try:
        young = _orphan(folder, "steps", "b" * 16, age_s=5)
        old = _orphan(folder, "steps", "c" * 16, age_s=2 * 3600)
        summary, out = run(spec_path, tmp_path / "r")
    finally:
        other.close()
    assert summary.exit_code == 0
    assert young.exists() and not old.exists()
    assert "removed 1 temporary file(s)" in out


def test_only_a_death_by_sigkill_is_oom_not_exit_code_137():
    assert status_for_exit(-signal.SIGKILL) == "oom"
    assert status_for_exit(137) == "failed"  # os._exit(137): a choice, not the kernel
    assert status_for_exit(1) == "failed"


def test_a_trial_that_calls_os_exit_137_is_recorded_as_failed(tmp_path):
    spec = tmp_path / "exit137.toml"
    spec.write_text("""\
# Test sweep: is a trial that exits with code 137 an OOM?
name = "exit137"
device = "cpu"
[workload]
name = "test_sweep_hooks:exiter"
options = { code = 137 }
[base]
samples = 32
batch_size = 8
[grid]
lr = [0.1]
""")
    summary, _ = run(spec, tmp_path / "r")
    (row,) = load_results(tmp_path / "r" / "exit137").trials.to_dict("records")
    assert row["status"] == "failed", row["error"]
    assert "exited with code 137" in row["error"] and "out of memory" not in row["error"]
    assert summary.exit_code == 1
