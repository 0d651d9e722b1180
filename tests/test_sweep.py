"""Sweeps end to end on CPU: results, resume, exactly-once with concurrent coordinators,
failure isolation (real OOM under a memory cap, SIGKILL, divergence, exceptions),
--retry-failed, refusal of a changed spec, and SIGKILL of the whole sweep twice."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

# GPU machines may lack optuna (scripts/gpu-check collects this module for its gpu test):
# skipped there, never a collection error. CI installs it, so everywhere else it runs.
optuna = pytest.importorskip("optuna")

from bench.console import Progress  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.store import load_results  # noqa: E402
from bench.sweep.runner import run_sweep  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
}


def counted_spec(
    tmp_path: Path,
    name: str,
    n: int,
    *,
    delay: float = 0.0,
    extra: str = "",
    workload: str = "test_sweep_hooks:counted",
    options: dict | None = None,
) -> tuple[Path, Path]:
    """A grid of ``n`` points of a counting workload (each run appends to the log);
    ``options`` replace the default ``delay`` option."""
    log = tmp_path / f"{name}.runs"
    option_text = "".join(
        f", {k} = {json.dumps(v)}" for k, v in (options or {"delay": delay}).items()
    )
    text = f"""\
# Test sweep: does every grid point run exactly once?
name = "{name}"
device = "cpu"
{extra}
[workload]
name = "{workload}"
options = {{ log = "{log}"{option_text} }}

[base]
samples = 64
batch_size = 16
timing_warmup_steps = 0

[budget]
epochs = 1

[grid]
"workload_options.tag" = {list(range(n))}
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path, log


def runs_per_tag(log: Path) -> Counter:
    if not log.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines() if line.strip())


def result_trials_per_key(storage_path: Path, sweep: str) -> Counter:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage_path))
    )
    study = optuna.load_study(study_name=sweep, storage=storage)
    return Counter(
        t.user_attrs["bench_key"]
        for t in study.get_trials()
        if t.user_attrs.get("bench_status") in ("ok", "oom", "diverged", "failed")
    )


def run(spec_path: Path, results: Path, **kw):
    stream = io.StringIO()
    summary = run_sweep(load_spec(spec_path), results=results, stream=stream, tty=False, **kw)
    return summary, stream.getvalue()


def test_sweep_writes_rows_and_study_and_resume_skips_done(tmp_path):
    spec_path, log = counted_spec(tmp_path, "basic", 4)
    results = tmp_path / "results"
    summary, out = run(spec_path, results, workers=2)
    assert summary.exit_code == 0 and summary.ran_here == 4
    assert sorted(runs_per_tag(log).values()) == [1, 1, 1, 1]
    r = load_results(results / "basic")
    spec = load_spec(spec_path)
    assert sorted(r.trials["trial_key"]) == sorted(p.key for p in spec.points)
    assert set(r.trials["status"]) == {"ok"}
    assert (r.steps.groupby("trial_key").size() == 4).all()  # 64 / 16 = 4 steps each
    # The study is an ordinary Optuna study: values, params and bench attributes.
    study = optuna.load_study(
        study_name="basic",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(results / "basic" / "optuna.journal"))
        ),
    )
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    assert {t.params["workload_options.tag"] for t in done} == {0, 1, 2, 3}
    assert all(t.values[0] == t.user_attrs["bench_row"]["tail_loss"] for t in done)
    assert study.user_attrs["bench_spec_hash"] == spec.spec_hash
    assert "[4/4]" in out
    # Run again: nothing left to do, nothing re-run.
    summary, out = run(spec_path, results, workers=1)
    assert summary.ran_here == 0 and summary.counts.done == 4
    assert sorted(runs_per_tag(log).values()) == [1, 1, 1, 1]


def test_changed_spec_under_same_name_is_refused(tmp_path):
    spec_path, _ = counted_spec(tmp_path, "changed", 2)
    results = tmp_path / "results"
    run(spec_path, results)
    before = sorted(p.name for p in (results / "changed" / "trials").iterdir())
    journal = (results / "changed" / "optuna.journal").read_bytes()
    spec_path.write_text(spec_path.read_text().replace("batch_size = 16", "batch_size = 8"))
    with pytest.raises(BenchError, match="different spec"):
        run(spec_path, results)
    assert sorted(p.name for p in (results / "changed" / "trials").iterdir()) == before
    assert (results / "changed" / "optuna.journal").read_bytes() == journal


def test_failures_are_recorded_and_do_not_touch_later_trials(tmp_path):
    """A real allocator OOM under the memory cap, a SIGKILLed worker, a diverging run and
    an exception: each recorded with its status; the ok trials match a clean run."""
    cases = """\
[[cases]]
workload = "test_sweep_hooks:hog"
[[cases]]
workload = "test_sweep_hooks:killer"
[[cases]]
lr = 1e12
[[cases]]
workload = "test_sweep_hooks:raiser"
[[cases]]
lr = 0.05
"""
    head = """\
# Test sweep: are failures isolated?
name = "{name}"
device = "cpu"
memory_cap = "3GiB"
[workload]
name = "teacher-mlp"
[base]
samples = 256
batch_size = 32
timing_warmup_steps = 0
[budget]
epochs = 2
"""
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(head.format(name="mixed") + cases)
    clean = tmp_path / "clean.toml"
    clean.write_text(head.format(name="clean") + "[[cases]]\nlr = 0.05\n")
    results = tmp_path / "results"
    summary, out = run(mixed, results, workers=1)
    assert summary.counts.done == 5
    r = load_results(results / "mixed").trials.set_index("workload")
    assert r.loc["test_sweep_hooks:hog", "status"] == "oom"
    assert "allocate" in r.loc["test_sweep_hooks:hog", "error"]
    killed = r.loc["test_sweep_hooks:killer"]
    assert killed["status"] == "oom" and "SIGKILL" in killed["error"]
    assert killed["cpu_peak_rss_bytes"] > 0  # the peak reached, polled while it ran
    assert r.loc["test_sweep_hooks:raiser", "status"] == "failed"
    assert "deliberate failure" in r.loc["test_sweep_hooks:raiser", "error"]
    teacher = (
        load_results(results / "mixed").trials.query("workload == 'teacher-mlp'").set_index("lr")
    )
    assert teacher.loc[1e12, "status"] == "diverged"
    assert teacher.loc[0.05, "status"] == "ok"
    assert summary.exit_code == 1  # a 'failed' trial (the raiser) makes the sweep exit non-zero
    summary, _ = run(clean, results, workers=1)
    ref = load_results(results / "clean").trials.iloc[0]
    assert ref["trial_key"] == teacher.loc[0.05, "trial_key"]
    assert ref["final_loss"] == pytest.approx(teacher.loc[0.05, "final_loss"], rel=1e-6)


def flaky_spec(tmp_path: Path, name: str, extra: str = "") -> Path:
    """A one-point sweep of test_sweep_hooks:flaky, which fails on its first attempt."""
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f"""\
# Test sweep: does --retry-failed run a failed trial again?
name = "{name}"
device = "cpu"
[workload]
name = "test_sweep_hooks:flaky"
options = {{ marker = "{tmp_path / "marker"}" }}
[base]
samples = 32
batch_size = 8
[grid]
lr = [0.1]
{extra}""")
    return spec


def test_retry_failed_reruns_only_failed(tmp_path):
    spec = flaky_spec(tmp_path, "flaky")
    results = tmp_path / "results"
    summary, _ = run(spec, results)
    assert summary.counts.statuses["failed"] == 1
    summary, _ = run(spec, results)  # plain resume: a failure is a result
    assert summary.ran_here == 0
    summary, _ = run(spec, results, retry_failed=True)
    assert summary.ran_here == 1 and summary.counts.statuses == Counter({"ok": 1})
    r = load_results(results / "flaky").trials
    assert len(r) == 1 and r["status"].iloc[0] == "ok" and r["attempt"].iloc[0] == 2


def test_progress_bar_and_plain_lines():
    s = io.StringIO()
    p = Progress("demo", 10, stream=s, tty=True)
    p.update(done=3, running=2, failed=1)
    p.log("a line")
    p.close()
    text = s.getvalue()
    assert (
        "\r" in text and "[#########---------------------] 3/10 done, 2 running, 1 not ok" in text
    )
    s = io.StringIO()
    p = Progress("demo", 10, stream=s, tty=False)
    p.update(done=3, running=2, failed=1)
    p.trial_line("ok abc")
    assert "\r" not in s.getvalue() and s.getvalue().startswith("[3/10] ok abc | 3/10 done")


def _coordinators(
    spec: Path, results: Path, n: int, *, storage: str | None = None
) -> list[subprocess.Popen]:
    cmd = [
        sys.executable,
        "-m",
        "bench.sweep",
        str(spec),
        "--workers",
        "1",
        "--results",
        str(results),
    ]
    if storage:
        cmd += ["--storage", storage]
    return [
        subprocess.Popen(
            cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outs = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-2000:]
        outs.append(err)
    return outs


def _ran_here(outputs: list[str]) -> list[int]:
    return [int(o.rsplit("; ran ", 1)[1].split(" here", 1)[0]) for o in outputs]


@pytest.mark.slow
def test_four_concurrent_coordinators_run_each_key_once(tmp_path):
    n = 16
    spec, log = counted_spec(tmp_path, "four", n, delay=0.2)
    results = tmp_path / "results"
    outputs = _finish(_coordinators(spec, results, 4))
    assert runs_per_tag(log) == Counter({i: 1 for i in range(n)})
    assert sum(_ran_here(outputs)) == n
    assert sum(c > 0 for c in _ran_here(outputs)) >= 2  # they really shared the work
    per_key = result_trials_per_key(results / "four" / "optuna.journal", "four")
    assert len(per_key) == n and set(per_key.values()) == {1}
    assert len(load_results(results / "four").trials) == n


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _n_trial_files(folder: Path) -> int:
    return len(list((folder / "trials").glob("*.parquet"))) if (folder / "trials").exists() else 0


@pytest.mark.slow
def test_sigkill_twice_then_resume_runs_every_key_exactly_once(tmp_path):
    n = 10
    spec, log = counted_spec(tmp_path, "killed", n, delay=0.5)
    results = tmp_path / "results"
    folder = results / "killed"
    cmd = [
        sys.executable,
        "-m",
        "bench.sweep",
        str(spec),
        "--workers",
        "2",
        "--results",
        str(results),
    ]

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            cmd,
            env=ENV,
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(p: subprocess.Popen) -> None:
        os.killpg(p.pid, signal.SIGKILL)  # coordinator, forkserver and workers at once
        p.wait()

    # Kill 1: mid-sweep, after a few trials have finished and others are running.
    p = start()
    _wait_for(lambda: _n_trial_files(folder) >= 3, 120)
    kill(p)
    first = _n_trial_files(folder)
    # Kill 2: a different moment: as soon as the resumed run has started a trial.
    runs_before = sum(runs_per_tag(log).values())
    p = start()
    _wait_for(lambda: sum(runs_per_tag(log).values()) > runs_before, 120)
    kill(p)
    # Resume to the end.
    p = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "will run again" in p.stderr  # trials that were running when it died
    assert first < n

    spec_obj = load_spec(spec)
    r = load_results(folder)
    assert sorted(r.trials["trial_key"]) == sorted(
        pt.key for pt in spec_obj.points
    )  # each exactly once
    assert set(r.trials["status"]) == {"ok"}
    assert not r.steps.duplicated(["trial_key", "step"]).any()
    assert len(r.steps) == 4 * n
    for f in sorted(folder.glob("*/*.parquet")):
        pq.read_table(f)  # every file readable: atomic writes left no half file
    assert not list(folder.glob("*/.*.tmp"))
    per_key = result_trials_per_key(folder / "optuna.journal", "killed")
    assert len(per_key) == n and set(per_key.values()) == {1}
    # Every tag ran at least once; the only re-runs are of trials a kill interrupted:
    # per kill and worker, the trial it was training and the one whose record was still
    # being written (rows on disk, Optuna record not yet): 2 kills x 2 workers x 2.
    runs = runs_per_tag(log)
    assert set(runs) == set(range(n))
    assert sum(runs.values()) - n <= 8


def test_search_mode_uses_n_trials_and_never_reruns_a_key(tmp_path):
    """TPE over a 2-point space with 5 trials: the sampler repeats itself, the sweep does not."""
    spec_path, log = counted_spec(
        tmp_path,
        "search",
        2,
        extra="",
    )
    text = (
        spec_path.read_text()
        + """
[search]
sampler = "tpe"
n_trials = 5
seed = 1
minimize = ["final_loss"]
maximize = ["samples_per_s"]
constraints = ["cpu_peak_rss_bytes <= 64GiB"]
"""
    )
    spec_path.write_text(text)
    results = tmp_path / "results"
    summary, out = run(spec_path, results, workers=1)
    assert summary.counts.done == 5
    runs = runs_per_tag(log)
    assert set(runs.values()) == {1}  # each distinct configuration trained once
    study = optuna.load_study(
        study_name="search",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(results / "search" / "optuna.journal"))
        ),
    )
    trials = study.get_trials()
    assert len(trials) == 5
    statuses = Counter(t.user_attrs["bench_status"] for t in trials)
    assert statuses["ok"] == len(runs) and statuses["duplicate"] == 5 - len(runs)
    # A duplicate carries the values of the trial it repeats; constraints were computed.
    for t in trials:
        if t.user_attrs["bench_status"] == "duplicate":
            original = trials[t.user_attrs["bench_duplicate_of"]]
            assert t.values == original.values
        violation = t.constraints["cpu_peak_rss_bytes <= 64GiB"]
        assert violation == pytest.approx(
            t.user_attrs["bench_row"]["cpu_peak_rss_bytes"] - 64 * 2**30
        )
    assert len(load_results(results / "search").trials) == len(runs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_sweep_pins_workers_and_records_a_real_cuda_oom(tmp_path):
    """On CUDA: one worker per GPU (CUDA_VISIBLE_DEVICES), allocator peaks recorded, and a
    real torch.OutOfMemoryError under the per-worker memory cap is an 'oom' row."""
    gpus = torch.cuda.device_count()
    spec = tmp_path / "gpu.toml"
    spec.write_text("""\
# Test sweep: do GPU workers run, pin and record CUDA OOM?
name = "gpu"
device = "cuda"
memory_cap = "2GiB"
[workload]
name = "teacher-mlp"
[base]
samples = 4096
timing_warmup_steps = 1
[budget]
epochs = 1
[[cases]]
workload = "test_sweep_hooks:hog"
[[cases]]
batch_size = 64
[[cases]]
batch_size = 512
""")
    summary, out = run(spec, tmp_path / "results", workers=gpus + 1)
    assert f"{gpus + 1} workers asked, {gpus} GPU(s)" in out
    r = load_results(tmp_path / "results" / "gpu").trials.set_index("workload")
    hog = r.loc["test_sweep_hooks:hog"]
    assert hog["status"] == "oom" and "out of memory" in hog["error"].lower()
    ok = load_results(tmp_path / "results" / "gpu").trials.query("status == 'ok'")
    assert len(ok) == 2
    assert (ok["device"] == torch.cuda.get_device_name(0)).all()
    assert (ok["peak_allocated_bytes"] > 0).all() and (
        ok["peak_reserved_bytes"] >= ok["peak_allocated_bytes"]
    ).all()
    assert (ok["peak_reserved_bytes"] < 2 * 2**30).all()  # inside the cap


def test_search_mode_retry_failed_reruns_the_failed_trial(tmp_path):
    """--retry-failed in search mode: the re-queued slot samples the same configuration;
    its earlier failed attempt is not a result to copy as a 'duplicate'."""
    search = '[search]\nsampler = "random"\nn_trials = 1\nseed = 0\nminimize = ["final_loss"]\n'
    spec = flaky_spec(tmp_path, "flakysearch", search)
    results = tmp_path / "results"
    summary, _ = run(spec, results)
    assert summary.counts.statuses == Counter({"failed": 1}) and summary.exit_code == 1
    summary, _ = run(spec, results)  # plain resume: a failure is a result
    assert summary.ran_here == 0 and summary.exit_code == 1
    summary, out = run(spec, results, retry_failed=True)
    assert summary.ran_here == 1, out
    assert summary.counts.statuses == Counter({"ok": 1}) and summary.exit_code == 0
    r = load_results(results / "flakysearch").trials
    assert len(r) == 1 and r["status"].iloc[0] == "ok" and r["attempt"].iloc[0] == 2


def test_worker_that_cannot_restore_its_cap_is_retired_not_reused(tmp_path):
    """A trial leaves its worker above the CPU memory cap: the worker says so in its reply
    and the coordinator replaces it; the next trials run in a fresh worker."""
    spec = tmp_path / "grow.toml"
    spec.write_text("""\
# Test sweep: is a worker that cannot restore its memory cap replaced?
name = "grow"
device = "cpu"
memory_cap = "3GiB"
[workload]
name = "seed-mlp"
[base]
samples = 64
batch_size = 16
timing_warmup_steps = 0
[[cases]]
workload = "test_sweep_hooks:grower"
[[cases]]
lr = 0.05
[[cases]]
lr = 0.2
""")
    summary, out = run(spec, tmp_path / "results", workers=1)
    assert summary.exit_code == 0, out
    assert summary.counts.statuses == Counter({"ok": 3}), out
    assert "retired after trial" in out and "cap cannot be put back" in out


def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _plan(tmp_path, device: str, workers: int):
    from bench.sweep.pool import worker_plan

    path, _ = counted_spec(tmp_path, "plan", 4)
    path.write_text(path.read_text().replace('device = "cpu"', f'device = "{device}"'))
    lines: list[str] = []
    plan = worker_plan(
        load_spec(path), requested=workers, remaining=4, threads=None, log=lines.append
    )
    return plan, "\n".join(lines)


def test_gpu_workers_are_pinned_to_the_parents_visible_devices(tmp_path, monkeypatch):
    _fake_cuda(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    (n, envs, _), out = _plan(tmp_path, "cuda", 4)
    assert n == 2 and [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3"]
    assert "4 workers asked, 2 GPU(s)" in out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-aaaa, MIG-bbbb")
    (n, envs, _), _ = _plan(tmp_path, "auto", 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["MIG-aaaa", "MIG-bbbb"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (n, envs, _), _ = _plan(tmp_path, "cuda", 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]


def test_one_worker_for_a_named_gpu(tmp_path, monkeypatch):
    _fake_cuda(monkeypatch, 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    (n, envs, _), out = _plan(tmp_path, "cuda:1", 3)
    # cuda:1 keeps its meaning (the parent's second visible GPU): one worker, not re-pinned.
    assert n == 1 and "CUDA_VISIBLE_DEVICES" not in envs[0]
    assert envs[0]["BENCH_SWEEP_DEVICE"] == "cuda:1"
    assert "3 workers asked, device cuda:1: one worker per GPU" in out


def test_dispatch_to_a_vanished_worker_replaces_it_and_keeps_the_job(tmp_path):
    from types import SimpleNamespace

    from bench.sweep.pool import Worker, WorkerPool
    from bench.sweep.tickets import Job

    path, _ = counted_spec(tmp_path, "gone", 1)
    spec = load_spec(path)
    lines: list[str] = []
    pool = WorkerPool(spec, folder=tmp_path, owner="me", log=lines.append)

    class Gone:
        def send(self, _obj):
            raise BrokenPipeError(32, "Broken pipe")

        def peak_rss(self):
            return None

    replaced = []
    pool.replace = replaced.append
    w = Worker(index=0, env={}, child=Gone(), ready=True)
    point = spec.points[0]
    job = Job(SimpleNamespace(number=7), point.config, point.key, 1)
    assert pool.dispatch(w, job) is False
    assert replaced == [w] and w.job is None and pool.backlog == [job]
    assert "worker 0 was gone before trial 7 could start" in "\n".join(lines)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", "sweep", *args],
        env={**ENV, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_results_or_journal_path_is_one_line_exit_2(tmp_path):
    spec, _ = counted_spec(tmp_path, "badpath", 1)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    for args in (
        ["--results", str(a_file)],
        ["--results", str(tmp_path / "r"), "--storage", f"journal:{a_file}/x/optuna.journal"],
    ):
        p = _cli(str(spec), *args)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stderr.startswith("bench: error: ") and "cannot use the journal" in p.stderr


def test_bad_threads_or_workers_refused_even_in_dry_run(tmp_path):
    spec, _ = counted_spec(tmp_path, "flags", 1)
    for flag, value in (("--threads", "0"), ("--workers", "0")):
        p = _cli(str(spec), "--dry-run", flag, value)
        assert p.returncode == 2 and f"{flag} must be >= 1" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


@pytest.mark.parametrize(
    "var, value", [("BENCH_RSS_METHOD", "smapls"), ("BENCH_METER_INTERVAL_MS", "5ms")]
)
def test_bad_meter_environment_stops_the_sweep_before_any_trial(tmp_path, var, value):
    # Not once per trial: every trial would be recorded as failed on the same typo.
    spec, log = counted_spec(tmp_path, "badenv", 1)
    results = tmp_path / "r"
    p = _cli(str(spec), "--results", str(results), env={var: value})
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("bench: error: ") and var in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not results.exists() and not log.exists()


def test_a_sweep_that_could_not_start_leaves_nothing_and_the_corrected_spec_runs(tmp_path):
    # A memory cap below a worker's baseline: no worker starts, nothing runs. The study
    # it created must not stay behind, or its spec hash refuses the corrected spec.
    spec, log = counted_spec(tmp_path, "capfix", 2, extra='memory_cap = "100MiB"')
    results = tmp_path / "r"
    p = _cli(str(spec), "--results", str(results))
    assert p.returncode == 2 and "could not start" in p.stderr, p.stderr
    assert "nothing ran" in p.stderr and "Traceback" not in p.stderr
    assert not log.exists() and not list((results / "capfix").glob("trials/*"))
    assert list((results / "capfix" / "logs").glob("*.log"))  # kept: they say why
    spec.write_text(spec.read_text().replace('"100MiB"', '"3GiB"'))
    p = _cli(str(spec), "--results", str(results))
    assert p.returncode == 0, p.stderr
    assert runs_per_tag(log) == Counter({0: 1, 1: 1})


def test_file_coordination_knows_when_another_coordinator_is_alive(tmp_path):
    from bench.sweep.storage import FileCoordination

    a, b = FileCoordination(tmp_path, "s"), FileCoordination(tmp_path, "s")
    a.start()
    assert not a.others_alive()
    b.start()
    assert a.others_alive() and b.others_alive()
    b.close()
    assert not a.others_alive()
    a.close()


def test_all_trials_invalid_exits_1_and_says_so(tmp_path):
    """Search mode where every sampled point is invalid (b > N): nothing trains, and the
    sweep must not look like a success."""
    spec, log = counted_spec(tmp_path, "allbad", 1)
    spec.write_text(
        spec.read_text()
        + """
[search]
sampler = "random"
n_trials = 2
seed = 0
minimize = ["final_loss"]
[search.ranges]
batch_size = { low = 100, high = 200 }
"""
    )
    summary, out = run(spec, tmp_path / "results")
    assert summary.counts.statuses == Counter({"invalid": 2})
    assert summary.exit_code == 1
    assert "every trial was an invalid configuration" in out
    assert runs_per_tag(log) == Counter()


def test_sigint_is_exit_130_without_a_traceback(tmp_path):
    spec, log = counted_spec(tmp_path, "sigint", 4, delay=5.0)
    p = subprocess.Popen(
        [sys.executable, "-m", "bench.sweep", str(spec), "--results", str(tmp_path / "r")],
        env=ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for(lambda: sum(runs_per_tag(log).values()) >= 1, 120)
    p.send_signal(signal.SIGINT)  # the coordinator only, as a terminal's ^C reaches it first
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "re-run the same command to resume" in err


def test_a_trial_past_its_hard_deadline_is_killed_and_its_worker_replaced(tmp_path):
    """time_limit_s: run_trial stops itself; a trial that hangs past the hard deadline
    (here: made to pass at once) is killed, recorded as failed, and its worker replaced."""
    from types import SimpleNamespace

    from bench.sweep.pool import WorkerPool
    from bench.sweep.tickets import Job

    path, log = counted_spec(tmp_path, "hang", 1, delay=120.0)
    spec = load_spec(path)
    pool = WorkerPool(spec, folder=tmp_path / "r", owner="me", log=print)
    pool.start([{"CUDA_VISIBLE_DEVICES": ""}], threads=1)
    try:
        deadline = time.monotonic() + 120
        while not pool.idle():
            assert pool.wait(0.1) == [] and time.monotonic() < deadline, "no worker ready"
        (w,) = pool.idle()
        first_pid = w.child.pid
        point = spec.points[0]
        job = Job(SimpleNamespace(number=0), point.config.replace(time_limit_s=1.0), point.key, 1)
        assert pool.dispatch(w, job)
        _wait_for(log.exists, 60)  # the trial has begun (and sleeps in make_model)
        job.deadline = time.monotonic()
        (end,) = pool.wait(0.1)
        assert end.job is job and end.status == "failed" and end.trial is None
        assert "time_limit_s of 1 s: worker killed" in end.error
        assert w.job is None and w.child.pid != first_pid  # a fresh worker in its place
    finally:
        pool.stop()


def _random_search(tmp_path, name: str, points: int, n_trials: int) -> tuple[Path, Path]:
    spec_path, log = counted_spec(tmp_path, name, points)
    spec_path.write_text(
        spec_path.read_text()
        + f'[search]\nsampler = "random"\nn_trials = {n_trials}\nseed = 3\nminimize = ["final_loss"]\n'
    )
    return spec_path, log


def test_search_repeats_do_not_use_up_trials_until_the_space_is_exhausted(tmp_path):
    """A seeded random sampler over 24 points with 30 trials: every point trains once (a
    repeated proposal proposes again), and the 6 trials beyond the space are duplicates,
    said so."""
    spec_path, log = _random_search(tmp_path, "exhaust", 24, 30)
    results = tmp_path / "results"
    summary, out = run(spec_path, results, workers=2)
    assert summary.counts.statuses == Counter({"ok": 24, "duplicate": 6}), out
    assert runs_per_tag(log) == Counter({i: 1 for i in range(24)})
    assert "search space is exhausted: all 24 configurations have run" in out
    assert len(load_results(results / "exhaust").trials) == 24
    summary, out = run(spec_path, results)  # a resume has nothing left to do
    assert summary.ran_here == 0 and summary.counts.statuses["ok"] == 24


@pytest.mark.slow
def test_two_search_coordinators_continue_one_sequence(tmp_path):
    """Two coordinators on one seeded search do not replay each other's proposals: the
    sampler's seed is derived per proposal from the study, not fixed per process."""
    spec_path, log = _random_search(tmp_path, "twosearch", 400, 12)
    results = tmp_path / "results"
    outputs = _finish(_coordinators(spec_path, results, 2))
    assert sum(_ran_here(outputs)) == 12
    assert sorted(runs_per_tag(log).values()) == [1] * 12
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "twosearch" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="twosearch", storage=storage)
    statuses = Counter(t.user_attrs.get("bench_status") for t in study.get_trials())
    # 12 draws from 400 points: a repeat now and then is chance, a replay is 12 of them.
    assert statuses["ok"] == 12 and statuses["repeat"] <= 2, statuses


def test_optuna_dashboard_sees_metric_names_and_key_columns(tmp_path):
    """optuna-dashboard cuts a user attribute at 1,024 characters and labels objectives
    by metric_names: the key columns come as attributes of their own, each short."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = tmp_path / "dash.toml"
    spec.write_text(
        '# Does the dashboard see what matters?\nname = "dash"\ndevice = "cpu"\n'
        '[workload]\nname = "seed-mlp"\noptions = { val_samples = 8 }\n'
        "[base]\nsamples = 64\n[budget]\nepochs = 1\n[grid]\nbatch_size = [8, 16]\n"
    )
    summary, _ = run(spec, tmp_path / "results")
    assert summary.exit_code == 0
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "results/dash/optuna.journal")))
    study = optuna.load_study(study_name="dash", storage=storage)
    assert study.metric_names == [o.column for o in load_spec(spec).objectives]
    for t in study.trials:
        attrs = t.user_attrs
        assert attrs["bench_label"] and attrs["samples_per_s"] > 0 and "tail_loss" in attrs
        short = {k: v for k, v in attrs.items() if k != "bench_row"}
        assert all(len(json.dumps(v)) < 1024 for v in short.values())
