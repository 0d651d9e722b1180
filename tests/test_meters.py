"""Meters on CPU: RSS peaks, the sampler, NVML and energy through a fake pynvml, FLOPs,
peak table, environment identity. The real CUDA/NVML paths are in test_meters_gpu.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from importlib import metadata
from types import SimpleNamespace

import pytest
import torch

from bench.config import TrialConfig
from bench.meters import FIELDS, TrialMeters, excluded, flops, memory
from bench.meters import env as env_mod
from bench.meters import nvml as nvml_mod
from bench.workloads import build_workload
from bench.workloads.base import ClassificationWorkload, mlp

MiB = 2**20
LINUX_HWM = sys.platform.startswith("linux") and memory.reset_rss_high_water()


def touch_buffer(nbytes: int) -> torch.Tensor:
    # torch.ones writes every page, so all of it is resident (torch.empty would not be).
    return torch.ones(nbytes // 4, dtype=torch.float32)


# -- CPU RSS ---------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX_HWM, reason="kernel RSS high-water mark not resettable here")
def test_hwm_reset_brings_the_mark_down_to_current_rss():
    buf = touch_buffer(96 * MiB)
    del buf
    before = memory.rss_high_water_bytes()
    assert memory.reset_rss_high_water()
    after = memory.rss_high_water_bytes()
    assert after <= before - 80 * MiB  # the freed buffer's peak is gone from the mark


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
@pytest.mark.parametrize("method", ["hwm", "sampler"])
def test_rss_peak_grows_by_a_known_buffer_within_10_percent(method):
    if method == "hwm" and not LINUX_HWM:
        pytest.skip("kernel RSS high-water mark not resettable here")
    size = 128 * MiB

    def peak_growth(extra: int) -> int:
        meters = TrialMeters(torch.device("cpu"), TrialConfig(), rss_method=method, interval_ms=2)
        meters.start()
        if extra:
            buf = touch_buffer(extra)
            time.sleep(0.05)  # long enough for the sampler variant to see it
            del buf
        meters.stop()
        f = meters.fields()
        assert f["cpu_rss_method"] == method
        return f["cpu_peak_rss_bytes"] - f["cpu_baseline_rss_bytes"]

    growth = peak_growth(size) - peak_growth(0)
    assert abs(growth - size) <= 0.10 * size, (growth, size)


def test_rss_meter_rejects_unknown_method():
    with pytest.raises(ValueError, match="prefer"):
        memory.RssMeter(prefer="vibes")


def test_rss_unmeasurable_gives_null_and_a_note(monkeypatch):
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: None)
    meters = TrialMeters(torch.device("cpu"), TrialConfig())
    meters.start()
    meters.stop()
    f = meters.fields()
    assert f["cpu_peak_rss_bytes"] is None and f["cpu_baseline_rss_bytes"] is None
    assert any("cpu rss" in n for n in f["notes"])


def test_hwm_refused_falls_back_to_sampler_with_a_note(monkeypatch):
    monkeypatch.setattr(memory, "reset_rss_high_water", lambda: False)
    meters = TrialMeters(torch.device("cpu"), TrialConfig(), interval_ms=2)
    meters.start()
    assert meters.sampler is not None and meters.sampler.running
    meters.stop()
    f = meters.fields()
    assert (
        f["cpu_rss_method"] == "sampler" and f["cpu_peak_rss_bytes"] >= f["cpu_baseline_rss_bytes"]
    )
    assert any("high-water" in n for n in f["notes"])


# -- the sampler thread ----------------------------------------------------------------


def test_sampler_ticks_survives_a_failing_probe_and_stops():
    calls = []

    def bad():
        raise RuntimeError("boom")

    s = memory.PeriodicSampler(0.002, [lambda: calls.append(1), bad])
    s.start()
    time.sleep(0.05)
    s.stop()
    s.stop()  # idempotent
    assert not s.running
    assert len(calls) >= 5 and s.errors == len(calls)
    n = len(calls)
    time.sleep(0.02)
    assert len(calls) == n  # really stopped
    assert not any(t.name == "bench-meter-sampler" for t in threading.enumerate())


def test_sampler_needs_a_positive_interval():
    with pytest.raises(ValueError):
        memory.PeriodicSampler(0, [])


def test_cpu_trial_starts_no_thread_and_reports_nulls_for_devices():
    if not LINUX_HWM:
        pytest.skip("with the sampler fallback a thread is expected")
    before = threading.active_count()
    meters = TrialMeters(torch.device("cpu"), TrialConfig())
    meters.start()
    assert threading.active_count() == before and meters.sampler is None
    meters.window_start()
    meters.window_end()
    meters.stop()
    meters.stop()
    f = meters.fields()
    assert set(FIELDS) <= set(f)
    for key in FIELDS:
        if not key.startswith("cpu_") and key != "window_wall_s":
            assert f[key] is None, key  # not measured -> None, never 0
    assert f["window_wall_s"] >= 0
    assert f["notes"] == []


def test_window_wall_time_needs_both_ends_and_counts_the_first_start():
    m = TrialMeters("cpu", TrialConfig())
    m.start()
    m.window_end()  # no window open: ignored
    m.window_start()
    time.sleep(0.05)
    m.window_start()  # a second start does not move the first
    m.window_end()
    m.stop()
    assert 0.05 <= m.fields()["window_wall_s"] < 1.0
    m = TrialMeters("cpu", TrialConfig())
    m.start()
    m.window_start()
    m.stop()  # e.g. an OOM before window_end
    assert m.fields()["window_wall_s"] is None


def test_fields_before_start_and_stop_before_start_are_safe():
    meters = TrialMeters(torch.device("cpu"), TrialConfig())
    meters.stop()
    meters.start()  # no-op after stop
    f = meters.fields()
    assert all(f[k] is None for k in FIELDS)


def test_interval_from_config_attribute_or_environment(monkeypatch):
    assert TrialMeters("cpu", TrialConfig()).interval_ms == 5.0
    monkeypatch.setenv("BENCH_METER_INTERVAL_MS", "2.5")
    assert TrialMeters("cpu", TrialConfig()).interval_ms == 2.5
    assert TrialMeters("cpu", SimpleNamespace(meter_interval_ms=10)).interval_ms == 10.0


@pytest.mark.parametrize(
    "name, value",
    [("BENCH_METER_INTERVAL_MS", v) for v in ("abc", "0", "-1", "nan")]
    + [("BENCH_RSS_METHOD", "bogus")],
)
def test_a_bad_meter_setting_is_an_error_not_ignored(monkeypatch, name, value):
    from bench.errors import ConfigError

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        TrialMeters("cpu", TrialConfig())


# -- a fake pynvml -----------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


class FakeNvml(types.ModuleType):
    """Enough of pynvml for the meters: two devices, a process list, memory, power, energy."""

    nvmlMemory_v2 = 0x02000028

    def __init__(
        self, *, pid: int | None = None, energy_supported: bool = True, fail_init: bool = False
    ):
        super().__init__("pynvml")
        self.NVMLError = FakeNVMLError
        self.uuids = ["GPU-aaaa-0000", "GPU-bbbb-1111"]
        self.used = [1000 * MiB, 2000 * MiB]
        self.proc_used = {}  # handle index -> bytes for our pid
        self.pid = os.getpid() if pid is None else pid
        self.power_mw = 100_000  # 100 W
        self.energy_mj = 5_000_000
        self.energy_supported = energy_supported
        self.fail_init = fail_init
        self.inits = 0
        self.v2_calls = 0

    def nvmlInit(self):
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.uuids):
            raise FakeNVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid in self.uuids:
            return self.uuids.index(uuid)
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetUUID(self, h):
        return self.uuids[h].encode()

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        if version is not None:
            self.v2_calls += 1
        return SimpleNamespace(used=self.used[h], total=80 * 2**30)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        procs = [SimpleNamespace(pid=999_999, usedGpuMemory=123 * MiB)]
        if h in self.proc_used:
            procs.append(SimpleNamespace(pid=self.pid, usedGpuMemory=self.proc_used[h]))
        return procs

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_supported:
            raise FakeNVMLError("Not Supported")
        return self.energy_mj

    def nvmlSystemGetDriverVersion(self):
        return b"999.99"


@pytest.fixture
def fake_nvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(nvml_mod, "torch_device_uuid", lambda i: ["bbbb-1111", "aaaa-0000"][i])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_handle_resolution_goes_by_uuid_not_ordinal(fake_nvml):
    nvml = nvml_mod.load_nvml()
    # torch's cuda:0 is NVML device 1 here (CUDA orders fastest-first, NVML by PCI bus).
    assert nvml_mod.resolve_handle(nvml, 0) == (1, "uuid")
    assert nvml_mod.resolve_handle(nvml, 1) == (0, "uuid")


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("1", (1, "CUDA_VISIBLE_DEVICES ordinal")), ("GPU-bbbb", (1, "CUDA_VISIBLE_DEVICES uuid"))],
)
def test_handle_resolution_through_cuda_visible_devices(fake_nvml, visible, expected):
    nvml = nvml_mod.load_nvml()
    assert (
        nvml_mod.resolve_handle(nvml, 0, uuid="", env={"CUDA_VISIBLE_DEVICES": visible}) == expected
    )


def test_handle_resolution_refuses_to_guess(fake_nvml):
    nvml = nvml_mod.load_nvml()
    with pytest.raises(nvml_mod.NvmlUnavailable, match="cannot map cuda:0"):
        nvml_mod.resolve_handle(nvml, 0, uuid="", env={})  # two devices, no uuid, no order
    with pytest.raises(nvml_mod.NvmlUnavailable, match="CUDA_VISIBLE_DEVICES"):
        nvml_mod.resolve_handle(nvml, 0, uuid="", env={"CUDA_VISIBLE_DEVICES": "7"})
    assert nvml_mod.resolve_handle(nvml, 0, uuid="", env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) == (
        0,
        "ordinal",
    )


def test_nvml_missing_or_failing_gives_null_columns_and_one_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    m = TrialMeters(torch.device("cuda:0"), TrialConfig())
    m.start()
    m.window_start()
    m.window_end()
    m.stop()
    f = m.fields()
    assert f["nvml_peak_used_bytes"] is None and f["energy_j"] is None
    assert [n for n in f["notes"] if n.startswith("nvml")] == [
        "nvml: pynvml not installed (package nvidia-ml-py)"
    ]

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    m = TrialMeters(torch.device("cuda:0"), TrialConfig())
    m.start()
    m.stop()
    f = m.fields()
    assert f["nvml_process_peak_bytes"] is None
    assert [n for n in f["notes"] if n.startswith("nvml")] == [
        "nvml: init failed: Driver Not Loaded"
    ]


def test_nvml_sampler_records_baseline_peaks_and_our_process(fake_nvml):
    m = TrialMeters(torch.device("cuda:0"), TrialConfig(), interval_ms=1)
    m.start()  # cuda:0 -> NVML handle 1 (used 2000 MiB, our process not on it yet)
    assert m.sampler is not None and m.sampler.running
    fake_nvml.used[1] = 6000 * MiB
    fake_nvml.proc_used[1] = 4000 * MiB
    time.sleep(0.03)
    fake_nvml.used[1] = 3000 * MiB  # the peak must survive the drop
    fake_nvml.proc_used[1] = 1000 * MiB
    time.sleep(0.01)
    m.stop()
    f = m.fields()
    assert f["nvml_baseline_used_bytes"] == 2000 * MiB
    assert f["nvml_peak_used_bytes"] == 6000 * MiB
    assert f["nvml_baseline_process_bytes"] == 0  # not in the list at start: holds nothing
    assert f["nvml_process_peak_bytes"] == 4000 * MiB  # the other pid's 123 MiB not counted
    assert f["nvml_memory_info"] == "v2" and fake_nvml.v2_calls > 0
    assert f["nvml_samples"] >= 10
    assert fake_nvml.inits == 0  # every init paired with a shutdown


def test_process_never_seen_makes_process_columns_null_with_a_note(fake_nvml):
    fake_nvml.pid = 4242  # "host PID" that is not ours
    fake_nvml.proc_used[1] = 500 * MiB
    m = TrialMeters(torch.device("cuda:0"), TrialConfig(), interval_ms=1)
    m.start()
    time.sleep(0.01)
    m.stop()
    f = m.fields()
    assert f["nvml_process_peak_bytes"] is None and f["nvml_baseline_process_bytes"] is None
    assert f["nvml_peak_used_bytes"] == 2000 * MiB
    assert any("never appeared" in n for n in f["notes"])


def test_energy_from_the_counter_over_the_window_only(fake_nvml):
    m = TrialMeters(torch.device("cuda:0"), TrialConfig(), interval_ms=1)
    m.start()
    fake_nvml.energy_mj += 111_000  # before the window: not counted
    m.window_start()
    fake_nvml.energy_mj += 2_500_000
    m.window_end()
    fake_nvml.energy_mj += 999_000  # after: not counted
    m.stop()
    f = m.fields()
    assert f["energy_method"] == "counter"
    assert f["energy_j"] == pytest.approx(2500.0)
    assert f["energy_window_s"] > 0


def test_energy_counter_that_did_not_move_is_null_not_zero(fake_nvml):
    m = TrialMeters(torch.device("cuda:0"), TrialConfig())
    m.start()
    m.window_start()
    m.window_end()
    m.stop()
    f = m.fields()
    assert f["energy_j"] is None and f["energy_method"] is None
    assert any("did not move" in n for n in f["notes"])


def test_short_window_against_the_counter_period_gets_a_note(fake_nvml):
    m = TrialMeters(torch.device("cuda:0"), TrialConfig(), interval_ms=1)
    m.start()
    for _ in range(6):  # the sampler sees the counter move every ~10 ms
        fake_nvml.energy_mj += 1000
        time.sleep(0.01)
    m.window_start()
    time.sleep(0.02)
    fake_nvml.energy_mj += 2000
    m.window_end()
    m.stop()
    f = m.fields()
    assert f["energy_j"] == pytest.approx(2.0)
    assert any("update period" in n for n in f["notes"]), f["notes"]


def test_energy_falls_back_to_integrated_power(fake_nvml):
    fake_nvml.energy_supported = False
    m = TrialMeters(torch.device("cuda:0"), TrialConfig(), interval_ms=1)
    m.start()
    m.window_start()
    time.sleep(0.2)
    m.window_end()
    m.stop()
    f = m.fields()
    assert f["energy_method"] == "power-integral"
    # constant 100 W over the window
    assert f["energy_j"] == pytest.approx(100.0 * f["energy_window_s"], rel=1e-6)
    assert any("counter unsupported" in n for n in f["notes"])


def test_power_integral_is_the_trapezoid_rule():
    p = nvml_mod.PowerIntegral()
    p.add(0.0, 50.0)  # before open: ignored
    p.open(1.0, 100.0)
    p.add(2.0, 200.0)  # ramp 100 -> 200 W over 1 s: 150 J
    p.add(1.5, 999.0)  # out of order: ignored
    assert p.close(4.0, 200.0) == pytest.approx(150.0 + 400.0)
    p.add(5.0, 1e6)  # after close: ignored
    assert p.joules == pytest.approx(550.0) and p.samples == 3


def test_own_pids_include_getpid():
    assert os.getpid() in nvml_mod.own_pids()


def test_driver_version_through_fake_and_none_without(fake_nvml, monkeypatch):
    assert nvml_mod.driver_version() == "999.99"
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvml_mod.driver_version() is None


# -- FLOPs -----------------------------------------------------------------------------


def test_flops_of_the_seed_mlp_match_the_hand_count():
    w = build_workload("seed-mlp")
    model = w.make_model()
    batch = tuple(t[:32] for t in w.train)
    # 10 -> 50 -> 2: forward 2*(10*50 + 50*2) per sample, backward twice that, minus the
    # input gradient of the first layer (x needs none): 2*(10*50).
    expected = 6 * (10 * 50 + 50 * 2) - 2 * 10 * 50
    count = flops.count_train_flops(w, model, batch)
    assert count.method == "meta" and count.units == 32
    assert count.per_unit == expected
    assert flops.train_flops_per_sample(w, model, batch, "fp32") == expected


def test_flop_count_leaves_model_and_rng_untouched():
    w = build_workload("teacher-mlp", options={"dropout": 0.1})
    model = w.make_model().double()
    batch = (w.train[0][:16].double(), w.train[1][:16])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    per_unit = flops.train_flops_per_sample(w, model, batch, "fp64")
    assert per_unit and per_unit > 0
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _DataDependentWorkload(ClassificationWorkload):
    """Boolean-mask indexing: a data-dependent shape the meta device cannot run."""

    def loss_sum(self, model, batch):
        x, y = batch
        keep = y >= 0
        return torch.nn.functional.cross_entropy(model(x[keep]), y[keep], reduction="sum")


def test_flops_fall_back_to_a_copy_when_meta_fails():
    base = build_workload("seed-mlp")
    w = _DataDependentWorkload(
        name="dd", train=base.train, val=base.val, make_model=lambda: mlp([10, 50, 2])
    )
    model = w.make_model()
    batch = tuple(t[:8] for t in w.train)
    rng = torch.random.get_rng_state()
    count = flops.count_train_flops(w, model, batch)
    assert count.method == "copy" and "meta pass failed" in count.note
    assert count.per_unit == 6 * 600 - 2 * 500
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_char_lm_counter_agrees_with_the_palm_formula():
    w = build_workload("char-lm", samples=64)
    model = w.make_model()
    tokens, lengths = (t[:4] for t in w.train)
    full = torch.full_like(lengths, tokens.shape[1])  # every target real, as the formula assumes
    counted = flops.train_flops_per_sample(w, model, (tokens, full))
    formula = w.flops_per_token_formula(model)
    # The formula counts biases and LayerNorm weights as matmul weights (a small
    # overcount, its docstring says); the counter sees only the matmuls.
    assert counted == pytest.approx(formula, rel=0.03)
    assert counted < formula


def test_excluded_drops_a_block_from_the_rss_peak_but_keeps_earlier_peaks():
    if not LINUX_HWM:
        pytest.skip("needs the kernel high-water mark")
    m = TrialMeters(torch.device("cpu"), TrialConfig())
    m.start()
    buf = touch_buffer(48 * MiB)
    del buf
    with excluded():
        big = touch_buffer(160 * MiB)
        del big
    m.stop()
    growth = m.fields()["cpu_peak_rss_bytes"] - m.fields()["cpu_baseline_rss_bytes"]
    assert 40 * MiB <= growth < 100 * MiB, growth / MiB


@pytest.mark.parametrize(
    ("name", "row"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", None),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", None),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 3090 Ti", None),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla T4", "T4"),
        ("AMD Instinct MI300X", None),
    ],
)
def test_device_names_map_to_table_rows(name, row):
    assert flops.device_row(name) == row


def test_peak_table_is_dense_and_complete():
    for row, peaks in flops.PEAK_TFLOPS.items():
        assert set(peaks) == {"fp64", "fp32", "tf32", "bf16", "fp16"}, row
    # dense bf16 = half the datasheet's 2:4-sparse figure (H100 SXM: 1,979)
    assert flops.PEAK_TFLOPS["H100 SXM"]["bf16"] == pytest.approx(1979 / 2)


def test_peak_on_cpu_is_unknown_unless_overridden():
    assert flops.peak_flops_per_s(torch.device("cpu"), "fp32") is None
    assert flops.peak_flops_per_s("cpu", "bf16", override_tflops=2.5) == 2.5e12
    assert flops.mfu(1e12, None) is None and flops.mfu(1e12, 4e12) == 0.25


def test_fp32_uses_the_tf32_column_only_when_torch_allows_tf32():
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert flops.matmul_precision("fp32") == "fp32"
        torch.set_float32_matmul_precision("high")
        assert flops.matmul_precision("fp32") == "tf32"
        assert flops.matmul_precision("bf16") == "bf16"
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "tf32"),
        ("torch.backends.fp32_precision = 'tf32'", "tf32"),
        ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", "fp32"),
        ("torch.backends.cuda.matmul.allow_tf32 = True", "tf32"),
        ("pass", "fp32"),
    ],
)
def test_matmul_precision_reads_torchs_new_tf32_api_without_raising(setting, expected):
    # Once the new API is used, torch's legacy getters raise ("mix of the legacy and
    # new APIs"); on CUDA run_trial reads them after training, so it must not. A fresh process:
    # these switches are process-wide and do not all reset.
    code = f"import torch; {setting}; from bench.meters import flops; print(flops.matmul_precision('fp32'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


# -- environment identity ----------------------------------------------------------------


def test_environment_record_has_identity_and_no_hostname():
    env = env_mod.environment()
    for key in (
        "python",
        "packages",
        "cpu_model",
        "cpu_count",
        "hostname_sha256",
        "git_commit",
        "git_dirty",
        "git_diff_sha256",
        "bench_source_sha256",
    ):
        assert key in env
    assert env["bench_source_sha256"] == env_mod.source_sha256()
    assert env["packages"]["torch"] == metadata.version("torch")
    import platform

    assert platform.node() not in json.dumps(env)


def test_env_id_is_stable_and_changes_with_the_software():
    a = env_mod.environment()
    b = env_mod.environment()
    assert env_mod.env_id(a) == env_mod.env_id(b)
    assert len(env_mod.env_id(a)) == 16
    b["packages"] = {**b["packages"], "torch": "0.0.1"}
    assert env_mod.env_id(a) != env_mod.env_id(b)
    # key order does not matter
    assert env_mod.env_id(dict(reversed(list(a.items())))) == env_mod.env_id(a)


def test_write_environment_is_atomic_and_idempotent(tmp_path):
    env = env_mod.environment()
    path = env_mod.write_environment(tmp_path, env)
    assert path == tmp_path / "env" / f"{env_mod.env_id(env)}.json"
    record = json.loads(path.read_text())
    assert record["env_id"] == env_mod.env_id(env)
    mtime = path.stat().st_mtime_ns
    env_mod.write_environment(tmp_path, env)
    assert path.stat().st_mtime_ns == mtime  # same content: not rewritten
    assert [p.name for p in (tmp_path / "env").iterdir()] == [path.name]  # no temp files left


def test_git_state_outside_git_is_null(tmp_path):
    assert env_mod.git_state(tmp_path) == {
        "git_commit": None,
        "git_dirty": None,
        "git_diff_sha256": None,
    }


def test_git_state_reports_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git executable")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "c")
    clean = env_mod.git_state(tmp_path)
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    assert clean["git_diff_sha256"] is None
    (tmp_path / "untracked.txt").write_text("results do not count\n")
    assert env_mod.git_state(tmp_path) == clean
    (tmp_path / "a.txt").write_text("two\n")
    two = env_mod.git_state(tmp_path)
    assert two["git_dirty"] is True and len(two["git_diff_sha256"]) == 16
    assert env_mod.git_state(tmp_path) == two  # the same edit, the same hash
    (tmp_path / "a.txt").write_text("three\n")
    three = env_mod.git_state(tmp_path)
    # Two different dirty trees at one commit are two environments, not one.
    assert three["git_commit"] == two["git_commit"] and three["git_dirty"] is True
    assert three["git_diff_sha256"] != two["git_diff_sha256"]
    assert env_mod.env_id({"git": two}) != env_mod.env_id({"git": three})


def test_sampler_stops_watching_the_energy_counter_once_its_period_is_known(fake_nvml):
    nvml = nvml_mod.load_nvml()
    monitor = nvml_mod.NvmlDeviceMonitor(nvml, 1)
    monitor.watch_energy = True
    for _ in range(nvml_mod.ENERGY_CHANGES_WATCHED + 5):
        fake_nvml.energy_mj += 10
        monitor.probe()
    assert not monitor.watch_energy
    assert len(monitor.energy_change_times) == nvml_mod.ENERGY_CHANGES_WATCHED
    assert monitor.energy_update_period_s() is not None
    nvml_mod.shutdown_nvml(nvml)


def test_handle_resolution_matches_a_uuid_spelled_differently(fake_nvml):
    fake_nvml.uuids = ["GPU-AAAA-0000", "GPU-BBBB-1111"]  # upper case: the lookup by string fails
    nvml = nvml_mod.load_nvml()
    assert nvml_mod.resolve_handle(nvml, 0, uuid="bbbb-1111", env={}) == (1, "uuid")
