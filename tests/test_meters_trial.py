"""Meters seen through a whole trial (bench.trial.run_trial) on CPU."""

from __future__ import annotations

import sys

import pytest
import torch

from bench.config import TrialConfig
from bench.meters import memory
from bench.trial import run_trial
from bench.workloads import build_workload
from bench.workloads.base import ClassificationWorkload

MiB = 2**20


class _BufferWorkload(ClassificationWorkload):
    """seed-mlp whose loss also fills a buffer of ``extra_bytes`` every micro-batch (then
    frees it): the trial's RSS peak must rise by exactly that much."""

    extra_bytes: int = 0

    def loss_sum(self, model, batch):
        x, _ = batch
        if self.extra_bytes and x.device.type != "meta":
            buf = torch.ones(self.extra_bytes // 4, dtype=torch.float32)  # every page written
            del buf
        return super().loss_sum(model, batch)


def build_buffer_workload(*, samples=None, extra_mib: int = 0) -> _BufferWorkload:
    base = build_workload("seed-mlp", samples=samples)
    w = _BufferWorkload(name="buffer", train=base.train, val=base.val, make_model=base.make_model)
    w.extra_bytes = extra_mib * MiB
    return w


WORKLOAD = f"{__name__}:build_buffer_workload"


def _trial(extra_mib: int) -> dict:
    config = TrialConfig(
        workload=WORKLOAD,
        workload_options={"extra_mib": extra_mib},
        samples=256,
        batch_size=64,
        epochs=1,
        device="cpu",
    )
    result = run_trial(config)
    assert result.status == "ok", result.trial["error"]
    return result.trial


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_trial_rss_peak_grows_by_a_known_buffer_within_10_percent():
    size_mib = 128
    before, loaded, after = (_growth(_trial(extra)) for extra in (0, size_mib, 0))
    growth = loaded - (before + after) / 2  # the plain trial's own growth, on both sides
    assert abs(growth - size_mib * MiB) <= 0.10 * size_mib * MiB, growth / MiB


def _growth(row: dict) -> int:
    return row["cpu_peak_rss_bytes"] - row["cpu_baseline_rss_bytes"]


def test_cpu_trial_row_carries_meter_columns():
    row = _trial(0)
    assert row["cpu_peak_rss_bytes"] >= row["cpu_baseline_rss_bytes"] > 0
    assert row["cpu_rss_method"] in ("hwm", "sampler")
    if memory.reset_rss_high_water():
        assert row["cpu_rss_method"] == "hwm"
    for key in (
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "nvml_peak_used_bytes",
        "energy_j",
        "mfu",
    ):
        assert row[key] is None, key  # CPU: not measured -> null, never 0
    per_sample = 6 * (10 * 50 + 50 * 2) - 2 * 10 * 50  # seed-mlp's counted training FLOPs
    assert row["flops_per_unit"] == per_sample
    assert row["flops_per_step"] == per_sample * row["samples_seen"] / row["optimizer_steps"]
    assert isinstance(row["env_id"], str) and len(row["env_id"]) == 16
