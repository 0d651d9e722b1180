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


# -- batch-dependent layers: norm and dropout options, the resnet workload ---------------


def test_teacher_mlp_defaults_build_the_plain_mlp_with_the_same_weights():
    # norm and dropout left out: the model and its initial weights are those of mlp()
    # without them, so results of the plain workload keep their meaning.
    from bench.workloads.base import mlp

    torch.manual_seed(3)
    plain = build_workload("teacher-mlp", samples=16).make_model()
    torch.manual_seed(3)
    reference = mlp([32, 128, 128, 10])
    assert [type(m) for m in plain] == [type(m) for m in reference]
    for a, b in zip(plain.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # A norm layer draws nothing when built: the Linear weights stay the plain ones.
    torch.manual_seed(3)
    normed = build_workload("teacher-mlp", samples=16, options={"norm": "batch"}).make_model()
    linears = [m for m in normed if isinstance(m, torch.nn.Linear)]
    assert torch.equal(linears[0].weight, reference[0].weight)
    assert torch.equal(linears[-1].weight, reference[-1].weight)


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, ""),
        ({"dropout": 0.1}, "Dropout×2"),
        ({"norm": "batch"}, "BatchNorm1d×2"),
        ({"norm": "batch", "dropout": 0.2, "depth": 3}, "BatchNorm1d×3,Dropout×3"),
        ({"norm": "ghost"}, "GhostBatchNorm1d×2"),
        ({"norm": "batch-eval"}, ""),  # per sample: its running statistics stay fixed
        ({"norm": "layer", "dropout": 0.1}, "Dropout×2"),
    ],
)
def test_batch_dependent_layers_are_found_by_inspecting_the_model(options, expected):
    from bench.workloads.batch_layers import batch_dependent_layers

    workload = build_workload("teacher-mlp", samples=16, options=options)
    state = torch.get_rng_state()
    assert batch_dependent_layers(workload) == expected
    assert torch.equal(state, torch.get_rng_state())  # built on the meta device


def test_inspection_restores_modes_and_unbuildable_models_are_null():
    from bench.workloads.base import ClassificationWorkload
    from bench.workloads.batch_layers import batch_dependent_layers, describe

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.0)).eval()
    assert describe(model) == "BatchNorm1d×1" and not model[0].training
    x = torch.zeros(2, 4)

    def needs_data():
        return torch.nn.Linear(4, int(torch.ones(()).item()))  # reads a tensor it makes

    workload = ClassificationWorkload(name="w", train=(x,), val=(x,), make_model=needs_data)
    assert batch_dependent_layers(workload) is None


def test_batch_eval_stays_in_eval_mode_and_ghost_norm_is_batch_norm_per_slice():
    from bench.workloads import norms

    frozen = norms.feature_norm("batch-eval", 4)
    frozen.train()
    x = torch.randn(16, 4, dtype=torch.float64)
    frozen.double()
    assert not frozen.training
    torch.testing.assert_close(frozen(x), x / (1 + frozen.eps) ** 0.5, rtol=1e-15, atol=0)
    assert torch.equal(frozen.running_mean, torch.zeros(4, dtype=torch.float64))
    ghost, plain = norms.feature_norm("ghost", 4).double(), torch.nn.BatchNorm1d(4).double()
    x = torch.randn(3 * norms.GHOST_BATCH, 4, dtype=torch.float64)
    expected = torch.cat([plain(c) for c in x.split(norms.GHOST_BATCH)])
    assert torch.equal(ghost(x), expected)
    assert torch.equal(ghost.running_var, plain.running_var)  # 3 updates, one a slice


@pytest.mark.parametrize("name", ["teacher-mlp", "resnet"])
def test_a_bad_norm_names_the_option_and_the_choices(name):
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"option norm must be one of .*got 'batchnorm'"):
        build_workload(name, samples=16, options={"norm": "batchnorm"})


def test_resnet_data_grows_with_n_and_its_model_classifies_32x32_images():
    from bench.workloads.batch_layers import batch_dependent_layers

    small = build_workload("resnet", samples=50, options={"val_samples": 20, "width": 4})
    large = build_workload("resnet", samples=400, options={"val_samples": 20, "width": 4})
    for a, b in zip(small.train, large.train, strict=True):
        assert torch.equal(a, b[:50])
    assert small.train[0].shape == (50, 3, 32, 32) and torch.equal(small.val[1], large.val[1])
    counts = torch.bincount(large.train[1], minlength=10)
    assert counts.min() > 400 / 40  # every class is common (none below a quarter of 1/10)
    model = small.make_model()
    assert model(small.train[0][:2]).shape == (2, 10)
    assert batch_dependent_layers(small) == "BatchNorm2d×9"  # stem, 3 stages x 2, 2 shortcuts
    from bench.workloads.batch_layers import describe
    from bench.workloads.resnet import resnet

    assert describe(resnet(4, 2, 10, "group")) == ""
    assert describe(resnet(4, 2, 10, "batch")) == "BatchNorm2d×15"  # 1 + 3 x 2 x 2 + 2
