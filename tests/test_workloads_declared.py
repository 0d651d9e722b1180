"""bench.workloads.declared: a built-in's options checked and its data sized without torch,
as its factory checks and builds them."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.workloads import build_workload, resolve, training_samples
from bench.workloads.declared import DECLARED

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_a_checker_takes_its_factorys_keywords_and_defaults(name):
    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(DECLARED[name]) == params(resolve(name))


SMALL = {"seed-mlp": {}, "teacher-mlp": {"width": 4}, "resnet": {"width": 2}}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_the_size_and_row_bytes_are_those_of_the_built_data(name):
    options = {**SMALL[name], "val_samples": 3}
    workload = build_workload(name, samples=5, options=options)
    checked = DECLARED[name](samples=5, **options)
    assert training_samples(name, 5, options) == workload.n_train == checked.n_train == 5
    for tensors in (workload.train, workload.val):
        # too_large() compares rows x row_bytes with the machine's memory, as check_fits
        # does with the tensors the factory draws.
        row = sum(t[0].numel() * t.element_size() for t in tensors)
        assert row == checked.row_bytes


BAD = [
    ("seed-mlp", {"val_samples": 0}),
    ("seed-mlp", {"step_slowdown": 11.0}),
    ("teacher-mlp", {"norm": "group"}),
    ("teacher-mlp", {"label_noise": "x"}),
    ("resnet", {"norm": "layer"}),
    ("resnet", {"classes": 1}),
]


@pytest.mark.parametrize(("name", "options"), BAD, ids=[f"{n}-{o}" for n, o in BAD])
def test_a_bad_value_is_the_factorys_own_error(name, options):
    with pytest.raises(ConfigError) as built:
        build_workload(name, samples=8, options=options)
    with pytest.raises(ConfigError) as sized:
        training_samples(name, 8, options)
    assert str(sized.value) == str(built.value)


def test_data_larger_than_memory_is_refused_unbuilt():
    with pytest.raises(ConfigError, match="its data does not fit in memory: .* train rows take"):
        training_samples("teacher-mlp", 10**12, {})
    with pytest.raises(ConfigError, match="has no option 'widht'.*did you mean 'width'"):
        training_samples("teacher-mlp", 8, {"widht": 3})


def test_a_spec_of_built_in_workloads_is_loaded_without_torch():
    # The sweep's coordinator: spec loading, option checks and plans, no torch imported.
    code = (
        "import json, sys\n"
        "from bench.sweep.spec import load_spec\n"
        "spec = load_spec('experiments/seed.toml')\n"
        "print(json.dumps([len(spec.points), sorted(m for m in ('torch', 'pandas') "
        "if m in sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [12, []]
