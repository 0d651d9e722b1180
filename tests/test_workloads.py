"""Synthetic workloads: N is how much of one task there is, not which task."""

import pytest
import torch

from bench.workloads import build_workload
from bench.workloads.base import ROW_CHUNK


@pytest.mark.parametrize("name", ["seed-mlp", "teacher-mlp"])
@pytest.mark.parametrize("small, large", [(100, 10_000), (ROW_CHUNK - 1, ROW_CHUNK + 1)])
def test_a_larger_training_set_extends_a_smaller_one_and_validation_stays(name, small, large):
    a = build_workload(name, samples=small)
    b = build_workload(name, samples=large)
    assert a.n_train == small and b.n_train == large
    for ta, tb in zip(a.train, b.train, strict=True):
        assert torch.equal(ta, tb[:small])
    for va, vb in zip(a.val, b.val, strict=True):
        assert torch.equal(va, vb)


def test_teacher_mlp_labels_come_from_one_teacher_at_every_n():
    # Labels of the shared samples agree (the same teacher and the same noise), and the
    # noise rate is the asked one; with the teacher drawn after N's inputs, agreement
    # between N = 1000 and N = 2000 was 0.11: chance for 10 classes.
    a = build_workload("teacher-mlp", samples=1000, options={"label_noise": 0.0})
    b = build_workload("teacher-mlp", samples=2000, options={"label_noise": 0.0})
    assert torch.equal(a.train[1], b.train[1][:1000])
    clean = build_workload("teacher-mlp", samples=20_000, options={"label_noise": 0.0})
    noisy = build_workload("teacher-mlp", samples=20_000, options={"label_noise": 0.3})
    assert torch.equal(clean.train[0], noisy.train[0])
    changed = (clean.train[1] != noisy.train[1]).float().mean().item()
    assert changed == pytest.approx(0.3 * 0.9, abs=0.02)  # a random class is right 1 in 10


def test_another_data_seed_is_another_task():
    a = build_workload("teacher-mlp", samples=500)
    b = build_workload("teacher-mlp", samples=500, options={"data_seed": 1})
    assert not torch.equal(a.train[0], b.train[0]) and not torch.equal(a.val[0], b.val[0])


def test_a_training_set_too_large_for_the_machine_fails_at_once():
    # 10^15 rows of 32 floats is beyond any address space: the allocation fails before
    # a second chunk is drawn (drawing chunk by chunk first would grow into the OOM killer).
    from bench.workloads.base import draw_rows

    calls = []

    def draw(g, rows):
        calls.append(rows)
        return (torch.randn(rows, 32, generator=g),)

    with pytest.raises(RuntimeError):
        draw_rows(10**15, 0, "train", draw)
    assert calls == [ROW_CHUNK]


def test_out_of_memory_while_building_stays_an_oom(monkeypatch):
    # Under a capped sweep worker or an OOM probe, data too big for the cap is the
    # result being measured (an oom), not an invalid configuration.
    import bench.workloads as workloads
    from bench.errors import ConfigError

    def too_big(samples=None):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    def broken(samples=None):
        raise ValueError("a bug")

    factories = {"big": too_big, "bug": broken}
    monkeypatch.setattr(workloads, "resolve", factories.__getitem__)
    with pytest.raises(RuntimeError, match="can't allocate"):
        workloads.build_workload("big")
    with pytest.raises(ConfigError, match="cannot be built: ValueError: a bug"):
        workloads.build_workload("bug")


def test_step_slowdown_is_checked_and_absent_by_default():
    from bench.errors import ConfigError
    from bench.workloads.base import ClassificationWorkload

    plain = build_workload("seed-mlp", samples=16, options={})
    assert type(plain) is ClassificationWorkload and "step_slowdown" not in plain.options
    slowed = build_workload("seed-mlp", samples=16, options={"step_slowdown": 0.2})
    assert type(slowed) is not ClassificationWorkload
    assert slowed.options["step_slowdown"] == 0.2
    for bad in (-0.1, 11.0):
        with pytest.raises(ConfigError, match="step_slowdown"):
            build_workload("seed-mlp", samples=16, options={"step_slowdown": bad})
