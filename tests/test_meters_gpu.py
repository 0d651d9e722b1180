"""Meters on a real CUDA device with the real NVML. Skipped only where CUDA is absent."""

from __future__ import annotations

import time

import pytest
import torch

from bench.config import TrialConfig
from bench.meters import TrialMeters, flops
from bench.meters import env as env_mod
from bench.meters import nvml as nvml_mod

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

GiB = 2**30


@pytest.fixture
def device():
    d = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize(d)
    return d


def test_handle_found_by_uuid_names_the_same_device(device):
    nvml = nvml_mod.load_nvml()
    try:
        handle, how = nvml_mod.resolve_handle(nvml, device.index)
        assert how == "uuid"
        name = nvml_mod._text(nvml.nvmlDeviceGetName(handle))
        assert name == torch.cuda.get_device_name(device)
        total = nvml.nvmlDeviceGetMemoryInfo(handle).total
        assert abs(total - torch.cuda.get_device_properties(device).total_memory) < 0.05 * total
    finally:
        nvml_mod.shutdown_nvml(nvml)


def test_allocator_and_nvml_see_a_known_allocation(device):
    meters = TrialMeters(device, TrialConfig(), interval_ms=2)
    meters.start()
    before = torch.cuda.memory_allocated(device)  # whatever earlier tests left alive
    x = torch.empty(GiB, dtype=torch.uint8, device=device)
    x.fill_(1)
    torch.cuda.synchronize(device)
    time.sleep(0.3)  # many sampler intervals with the gigabyte held (NVML calls can be slow)
    del x
    meters.stop()
    f = meters.fields()
    assert GiB <= f["peak_allocated_bytes"] - before <= GiB + 64 * 2**20
    assert f["peak_reserved_bytes"] >= f["peak_allocated_bytes"]
    assert f["alloc_retries"] == 0 and f["cuda_ooms"] == 0
    nvml_notes = [n for n in f["notes"] if n.startswith("nvml")]
    assert f["nvml_peak_used_bytes"] is not None, nvml_notes
    assert f["nvml_peak_used_bytes"] - f["nvml_baseline_used_bytes"] >= 0.95 * GiB
    if f["nvml_process_peak_bytes"] is None:  # container without host PIDs: says so
        assert any("process" in n for n in nvml_notes)
    else:
        assert f["nvml_process_peak_bytes"] - f["nvml_baseline_process_bytes"] >= 0.95 * GiB
        # the baseline is taken after the context exists: it holds the context
        assert f["nvml_baseline_process_bytes"] > 0
    assert f["nvml_samples"] >= 10


def test_oom_is_counted_and_stop_is_safe_after_it(device):
    meters = TrialMeters(device, TrialConfig())
    meters.start()
    total = torch.cuda.get_device_properties(device).total_memory
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(2 * total, dtype=torch.uint8, device=device)
    meters.window_end()
    meters.stop()
    meters.stop()
    f = meters.fields()
    assert f["cuda_ooms"] >= 1


def test_energy_over_a_busy_window_is_plausible(device):
    meters = TrialMeters(device, TrialConfig())
    meters.start()
    a = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    meters.window_start()
    end = time.perf_counter() + 1.5
    while time.perf_counter() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize(device)
    meters.window_end()
    meters.stop()
    f = meters.fields()
    if any("neither energy counter" in n for n in f["notes"]):
        pytest.skip(f"this board/sandbox exposes no energy or power reading: {f['notes']}")
    assert f["energy_method"] in ("counter", "power-integral"), f["notes"]
    watts = f["energy_j"] / f["energy_window_s"]
    assert 20 < watts < 2000, (watts, f["notes"])


def test_meters_make_no_host_sync_between_start_and_stop(device):
    meters = TrialMeters(device, TrialConfig(), interval_ms=2)
    meters.start()
    a = torch.randn(1024, 1024, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        meters.window_start()
        for _ in range(50):
            a = torch.tanh(a @ a)
        time.sleep(0.02)  # the sampler thread ticks meanwhile
        meters.window_end()
        meters.stop()
        f = meters.fields()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert f["peak_allocated_bytes"] > 0


def test_flops_counted_for_a_cuda_model_equal_the_cpu_count(device):
    from bench.workloads import build_workload

    w = build_workload("teacher-mlp")
    cpu_batch = tuple(t[:32] for t in w.train)
    model = w.make_model()
    on_cpu = flops.train_flops_per_sample(w, model, cpu_batch)
    on_gpu = flops.train_flops_per_sample(
        w, model.to(device), tuple(t.to(device) for t in cpu_batch)
    )
    assert on_cpu == on_gpu > 0


def test_this_device_has_a_peak_or_says_none(device):
    name = torch.cuda.get_device_name(device)
    peak = flops.peak_flops_per_s(device, "bf16")
    if flops.device_row(name) is not None:
        assert peak is not None and peak > 1e13
    else:
        assert peak is None


def test_environment_names_the_device_and_driver():
    env = env_mod.environment(refresh=True)
    assert env["cuda_devices"] and env["cuda_devices"][0]["total_memory_bytes"] > 0
    assert env["nvidia_driver"]
    assert env["torch_cuda"]


def test_cuda_trial_row_has_device_meters():
    from bench.trial import run_trial

    config = TrialConfig(
        workload="teacher-mlp", samples=4096, batch_size=256, epochs=2, device="cuda"
    )
    row = run_trial(config).trial
    assert row["status"] == "ok", row["error"]
    assert (
        row["peak_allocated_bytes"] > 0
        and row["peak_reserved_bytes"] >= row["peak_allocated_bytes"]
    )
    assert row["nvml_peak_used_bytes"] >= row["nvml_baseline_used_bytes"] > 0
    assert row["cpu_peak_rss_bytes"] > 0
    assert row["energy_j"] is not None or "energy" in (row["notes"] or "")


def test_flop_count_fallback_on_a_copy_does_not_raise_the_peaks(device):
    from test_meters import _DataDependentWorkload

    from bench.workloads.base import mlp

    sizes = [1024, 4096, 4096, 10]  # ~21 M parameters: 84 MB of fp32 weights
    x = torch.randn(256, 1024)
    y = torch.randint(0, 10, (256,))
    w = _DataDependentWorkload(name="dd", train=(x, y), val=(x, y), make_model=lambda: mlp(sizes))
    # A CUDA backward runs on autograd's device thread, whose first matmul allocates a
    # cuBLAS workspace that stays: done here, so the copy pass below adds nothing lasting.
    # A Linear with bias, not a bare mm: its forward is addmm, which torch may send to
    # cuBLASLt, whose workspace is kept apart from cuBLAS's (TORCH_CUBLASLT_UNIFIED_WORKSPACE)
    # and allocated, to stay, on first use: the copy's first addmm must not be that use.
    warm = torch.nn.Linear(64, 64, device=device)
    warm(torch.randn(8, 64, device=device, requires_grad=True)).sum().backward()
    del warm
    meters = TrialMeters(device, TrialConfig(), interval_ms=2)
    meters.start()
    model = w.make_model().to(device)
    batch = (x.to(device), y.to(device))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    before = torch.cuda.max_memory_allocated(device)
    count = flops.count_train_flops(w, model, batch)
    assert count.method == "copy" and count.per_unit > 0
    meters.stop()
    f = meters.fields()
    # the copy (weights + its grads + activations) ran inside bench.meters.excluded()
    assert f["peak_allocated_bytes"] == before
    assert f["peak_allocated_bytes"] < before + weights
    assert all(p.grad is None for p in model.parameters())
