"""bench.procs: a trial in a fresh process, under a memory cap that really bites."""

from __future__ import annotations

import pytest
import torch

from bench.config import TrialConfig
from bench.errors import BenchError
from bench.procs import CPU_METHOD, measure_baseline, run_in_subprocess, run_isolated

MiB = 2**20


def _config(**options) -> TrialConfig:
    return TrialConfig(
        workload="test_oom_helpers:build",
        workload_options=options,
        batch_size=8,
        epochs=None,
        max_steps=2,
        device="cpu",
    )


@pytest.fixture(scope="module")
def baseline() -> int:
    return int(measure_baseline("cpu")["baseline_bytes"])


def test_baseline_is_an_idle_child_with_torch(baseline):
    info = measure_baseline("cpu")
    # torch alone maps well over 100 MiB of private data; a machine has more than that.
    assert 100 * MiB < baseline < info["total_bytes"]
    assert info["baseline_rss_bytes"] > 50 * MiB
    # What the OOM probe key identifies the software by: the child's own torch.
    import torch

    assert (info["torch"], info["cuda"], info["name"]) == (
        torch.__version__,
        torch.version.cuda,
        "cpu",
    )


def test_result_comes_back_from_the_child():
    result = run_in_subprocess(_config())
    assert result.trial["status"] == "ok", result.trial["error"]
    assert result.trial["optimizer_steps"] == 2
    assert len(result.steps) == 2


def test_cap_makes_allocations_fail_as_oom(baseline):
    # 64 MiB per sample x 8 samples = 512 MiB of activations against 128 MiB of room:
    # RLIMIT_DATA makes the allocation fail, torch raises, the trial row says oom.
    cap = baseline + 128 * MiB
    run = run_isolated(_config(alloc_mib_per_sample=64.0), cap_bytes=cap)
    assert run.result.trial["status"] == "oom", run.result.trial["error"]
    assert "allocate" in run.result.trial["error"].lower()
    assert run.cap is not None and run.cap.method == CPU_METHOD and run.cap.limit_bytes == cap
    # The same trial with room to spare fits, so it was the cap, not the workload.
    ok = run_isolated(_config(alloc_mib_per_sample=64.0), cap_bytes=baseline + 1024 * MiB)
    assert ok.result.trial["status"] == "ok", ok.result.trial["error"]
    assert ok.stats["child_rss_hwm_bytes"] > 0


def test_sigkill_is_recorded_as_oom():
    run = run_isolated(_config(kill_at=4))
    assert run.exitcode == -9
    assert run.result.trial["status"] == "oom"
    assert "SIGKILL" in run.result.trial["error"]
    assert run.result.trial["micro_batch_size"] == 8


def test_ordinary_error_is_a_failure_not_an_oom():
    result = run_in_subprocess(_config(fail_at=4))
    assert result.trial["status"] == "failed"
    assert "deliberate failure" in result.trial["error"]


def test_exit_code_137_without_a_signal_is_a_failure_not_an_oom():
    config = _config().replace(workload="test_sweep_hooks:exiter", workload_options={})
    run = run_isolated(config)
    assert run.exitcode == 137
    assert run.result.trial["status"] == "failed", run.result.trial["error"]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_probe_has_no_result(signal_name):
    # SIGINT: the child replies that it was interrupted; SIGTERM: it dies of it. Either
    # way no row: the caller is interrupted too (bench oom says so and exits 130).
    config = _config().replace(
        workload="test_sweep_hooks:signaller", workload_options={"signal_name": signal_name}
    )
    with pytest.raises(KeyboardInterrupt):
        run_isolated(config, timeout_s=60)


def test_timeout_kills_the_child_and_fails():
    config = _config().replace(max_steps=10**6)
    run = run_isolated(config, timeout_s=1.0)
    assert run.result.trial["status"] == "failed"
    assert "timed out" in run.result.trial["error"]


def test_a_result_that_arrives_after_the_timeout_is_not_accepted():
    # A 2-step trial takes ~0.5 s in its fresh process: far past a 0.02 s timeout. No
    # grace period after the deadline: a result that comes later is no result.
    run = run_isolated(_config(), timeout_s=0.02)
    assert run.result.trial["status"] == "failed", run.result.trial
    assert "timed out after 0.02 s" in run.result.trial["error"]
    assert run.wall_s < 2.0
    assert run.timed_out and not run.reported  # our kill: bench oom must not take it for pressure


def test_cap_below_baseline_is_bad_input(baseline):
    with pytest.raises(BenchError, match="baseline"):
        run_isolated(_config(), cap_bytes=baseline // 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cap_is_the_allocator_fraction_minus_the_context():
    total = torch.cuda.get_device_properties(0).total_memory
    cap = min(total // 2, 4 * 2**30)
    config = TrialConfig(
        workload="teacher-mlp",
        workload_options={"width": 1024},
        batch_size=64,
        epochs=None,
        max_steps=2,
        device="cuda",
    )
    run = run_isolated(config, cap_bytes=cap)
    assert run.result.trial["status"] == "ok", run.result.trial["error"]
    assert run.cap.method == "cuda-memory-fraction"
    assert 0 < run.cap.baseline_bytes < cap  # the context was measured, and is not free
    assert run.cap.limit_bytes == cap - run.cap.baseline_bytes
    assert run.stats["child_max_reserved_bytes"] <= run.cap.limit_bytes


# -- the CUDA context's size, as the CUDA cap measures it (NVML faked) -------------------


def test_nvml_used_reads_our_process_and_the_device(monkeypatch):
    import sys

    from test_meters import FakeNvml

    from bench.procs import caps

    fake = FakeNvml()
    fake.proc_used = {1: 600 * MiB}
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # torch's cuda:0 is NVML's device 1
    assert caps.nvml_used(0, by_uuid=False) == (600 * MiB, 2000 * MiB)
    assert fake.inits == 0, "every init is paired with a shutdown"
    fake.proc_used = {}  # our PID not listed (a container): the device figure still comes
    assert caps.nvml_used(0, by_uuid=False) == (None, 2000 * MiB)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    assert caps.nvml_used(0, by_uuid=False) == (None, None)


@pytest.mark.parametrize(
    ("nvml_now", "before", "expected_mib"),
    [
        ((700 * MiB, 5000 * MiB), 4000 * MiB, 700 - 100),  # NVML lists our process
        ((None, 5000 * MiB), 4000 * MiB, 1000 - 100),  # device growth since before
        ((None, 5000 * MiB), None, 9000 - 100),  # no before: all used on the device
        ((None, None), 4000 * MiB, 9000 - 100),  # no NVML at all
        ((None, 3000 * MiB), 4000 * MiB, 9000 - 100),  # shrank: someone else freed memory
    ],
)
def test_cuda_context_bytes_prefers_our_own_figure(monkeypatch, nvml_now, before, expected_mib):
    from bench.procs import caps

    monkeypatch.setattr(caps, "nvml_used", lambda index, by_uuid=True: nvml_now)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 100 * MiB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (71000 * MiB, 80000 * MiB))
    assert caps.cuda_context_bytes(0, before) == expected_mib * MiB


# -- the child loop, as a sweep's warm worker runs it --------------------------------------


def _next(child, timeout: float = 120.0):
    assert child.conn.poll(timeout), "the child sent nothing"
    return child.conn.recv()


def test_a_warm_child_answers_each_job_with_a_typed_reply_until_stopped(tmp_path):
    import os

    from bench.procs import ChildProcess, ChildSetup
    from bench.procs import messages as msg

    setup = ChildSetup(log_path=str(tmp_path / "child.log"), device="cpu")
    child = ChildProcess(setup, name="bench-test-child")
    child.start()
    try:
        ready = _next(child)
        assert isinstance(ready, msg.Ready) and ready.pid == child.pid and ready.cap is None
        child.send(msg.RunTrial(1, _config().to_dict()))
        done = _next(child)
        assert isinstance(done, msg.TrialDone) and done.job_id == 1 and done.retire is None
        assert done.trial["status"] == "ok" and len(done.steps) == 2
        assert done.stats["child_rss_hwm_bytes"] > 0
        child.send(msg.RunTrial(2, {**_config().to_dict(), "batch_size": 0}))
        invalid = _next(child)  # bad input: refused, and the child stays for the next job
        assert isinstance(invalid, msg.Invalid) and invalid.job_id == 2
        assert "batch_size" in invalid.message
        child.send(msg.Query(3, os.getpid))
        answer = _next(child)
        assert isinstance(answer, msg.Answer) and answer.value == child.pid
        child.send(msg.Stop())
        child.join(30)
        assert child.exitcode == 0
    finally:
        child.kill()
        child.close()
