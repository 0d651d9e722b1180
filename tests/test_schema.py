"""The validating models: the JSON Schemas they give editors, one-line errors, and trial
keys that do not depend on how a configuration is validated."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.config import TrialConfig, config_schema
from bench.errors import ConfigError
from bench.sweep.spec import Objective, hash_with_objectives, parse_spec
from bench.sweep.spec_schema import spec_schema

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))
SCHEMA_FILE = REPO / "docs" / "spec.schema.json"
DIRECTIVE = "#:schema ../docs/spec.schema.json"


def printed_schema(capsys, what: str) -> str:
    assert main(["schema", what]) == 0
    return capsys.readouterr().out


def spec_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_spec_schema_is_what_the_command_prints(capsys):
    # Regenerate with: python -m bench schema spec > docs/spec.schema.json
    assert printed_schema(capsys, "spec") == SCHEMA_FILE.read_text()
    assert json.loads(SCHEMA_FILE.read_text()) == spec_schema()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_every_experiment_points_editors_at_the_schema_and_is_valid(path):
    text = path.read_text()
    assert text.splitlines()[0] == DIRECTIVE
    target = path.parent / DIRECTIVE.split(" ", 1)[1]
    assert target.resolve() == SCHEMA_FILE.resolve()
    errors = [e.message for e in spec_validator().iter_errors(tomllib.loads(text))]
    assert errors == []


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.update(gird=d.pop("grid")), "'gird' was unexpected"),
        (lambda d: d["grid"].update(batch_sise=d["grid"].pop("batch_size")), "'batch_sise'"),
        (lambda d: d["base"].update(learning_rate=0.1), "'learning_rate'"),
        (lambda d: d["workload"].update(nmae="x"), "'nmae'"),
        (lambda d: d["grid"].update(lr=["fast"]), "'fast' is not of type 'number'"),
        (lambda d: d["grid"].update(accumulation_steps=[]), "should be non-empty"),
        (lambda d: d["base"].update(mode="sdg"), "'sdg' is not one of"),
        (lambda d: d.update(seeds=0), "0 is not valid"),
    ],
)
def test_the_schema_rejects_a_misspelt_key_or_a_wrong_value(edit, needle):
    spec = tomllib.loads((REPO / "experiments" / "smoke.toml").read_text())
    edit(spec)
    messages = [e.message for e in spec_validator().iter_errors(spec)]
    messages += [m.message for e in spec_validator().iter_errors(spec) for m in e.context]
    assert any(needle in m for m in messages), messages


def test_dotted_and_nested_workload_options_are_both_valid():
    spec = tomllib.loads((REPO / "experiments" / "smoke.toml").read_text())
    spec["grid"]["workload_options.val_samples"] = [100, 200]
    spec["grid"]["workload_options"] = {"width": [8]}
    assert list(spec_validator().iter_errors(spec)) == []
    spec["grid"]["workload_options.val_samples"] = 100  # an axis is a list
    assert list(spec_validator().iter_errors(spec))


def test_the_config_schema_describes_trial_configs(capsys):
    schema = json.loads(printed_schema(capsys, "config"))
    assert schema == config_schema()
    validator = jsonschema.Draft202012Validator(schema)
    config = TrialConfig(workload="teacher-mlp", workload_options={"width": 8}, max_steps=4)
    assert list(validator.iter_errors(config.to_dict())) == []
    assert list(validator.iter_errors({"batchsize": 3}))
    assert list(validator.iter_errors({"momentum": 1.0}))  # [0, 1)
    assert schema["properties"]["batch_size"]["description"] == "The micro-batch b."


def test_a_bad_schema_name_is_one_line_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "bench", "schema", "specs"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid choice" in r.stderr


# -- trial keys: the content hash must not move, or stored results lose their trials ----

# Keys of these configurations as stored results and studies hold them.
KEYS = {
    "bdee7ef1764ebeac": {},
    "83af8a9871254029": dict(lr=1, momentum=0, time_limit_s=600, grad_clip=1),
    "ca308e8f41643493": dict(
        workload="teacher-mlp",
        workload_options={"width": 16, "depth": 2},
        samples=1000,
        batch_size=8,
        accumulation_steps=4,
        epochs=None,
        max_steps=50,
        precision="bf16",
        seed=7,
    ),
    "46b3527d26ee7b4a": dict(
        mode="sgd",
        batch_size=1,
        optimizer="adamw",
        lr=3e-4,
        weight_decay=0.01,
        scheduler="cosine",
        warmup=10,
        eval_every=5,
        patience=3,
        min_delta=0.001,
        restore_best=True,
        device="cuda:1",
        data_path="dataloader",
        peak_tflops=989.5,
        drop_last=True,
        partial_window="drop",
        normalize="micro",
        grad_norm_every=0,
        flush_every=8,
        timing_warmup_steps=0,
    ),
}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_trial_keys_are_stable(key):
    assert TrialConfig(**KEYS[key]).trial_key == key
    assert TrialConfig.from_mapping(KEYS[key]).trial_key == key


def test_spec_hash_and_point_keys_are_stable():
    from test_sweep_spec import GOOD

    spec = parse_spec(tomllib.loads(GOOD), text=GOOD)
    assert spec.spec_hash == "288dc7c904488b6c"
    # The objective is part of the hash: ranked by final_loss, the same points hash so.
    old = [Objective("final_loss", "minimize")]
    assert hash_with_objectives(spec, old) == "a9eec4bc4cda5119"
    assert [p.key for p in spec.points] == [
        "6a218f23beb0f0d9",
        "6e47c7b8fa2bbea9",
        "d2f91369ff96a8eb",
        "44b667ed8d8cafe6",
        "039f8b622f7b27fc",
        "d14b541bd229ddbe",
        "8bb4c92eae47bf73",
        "c27831e9b1f12351",
    ]
    search = GOOD + (
        '[search]\nsampler = "random"\nn_trials = 5\nseed = 1\nminimize = ["final_loss"]\n'
        'constraints = ["peak_reserved_bytes <= 2GiB"]\n[search.ranges]\n'
        "lr = { low = 1e-3, high = 1.0, log = true }\naccumulation_steps = { low = 1, high = 4 }\n"
    )
    spec = parse_spec(tomllib.loads(search), text=search)
    assert spec.spec_hash == "4449a327d3d6aad9"
    assert [(r.name, r.integer) for r in spec.search.ranges] == [
        ("lr", False),
        ("accumulation_steps", True),
    ]


# -- one line naming the key, the value and what is accepted ------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"samples": True}, "samples must be an integer >= 1, got True"),
        ({"lr": float("nan")}, "lr must be a number >= 0, got nan"),
        ({"lr": "fast"}, "lr must be a number >= 0, got 'fast'"),
        ({"momentum": 1}, "momentum must be a number in [0, 1), got 1"),
        ({"eval_every": -1}, "eval_every must be an integer >= 0 (0: never), got -1"),
        ({"drop_last": 1}, "drop_last must be true or false, got 1"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, cuda:N, mps, got 'tpu'"),
        (
            {"optimizer": "adam"},
            "unknown optimizer 'adam' (did you mean 'adamw'?); expected one of: adamw, sgd",
        ),
        ({"workload": ""}, "workload must be a workload name, got ''"),
        ({"workload_options": {1: 2}}, "workload_options keys must be strings, got 1"),
        ({"workload_options": "abc"}, "workload_options must be a table of options, got 'abc'"),
        ({"batchsize": 3}, "unknown key 'batchsize' (did you mean 'batch_size'?)"),
        ({"epochs": None}, "give epochs or max_steps (or both: whichever ends first)"),
        ({"patience": 2, "eval_every": 0}, "patience needs evaluations: eval_every is 0 (never)"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TrialConfig(**kwargs)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_mapping(kwargs, where="c.toml")
    assert str(info.value) == f"c.toml: {message}"


def test_replace_validates_and_float_fields_hold_floats():
    config = TrialConfig(lr=1, time_limit_s=600)
    assert type(config.lr) is float and type(config.time_limit_s) is float
    assert config.replace(seed=3).seed == 3
    with pytest.raises(ConfigError, match="seed must be an integer >= 0, got -1"):
        config.replace(seed=-1)
    with pytest.raises(AttributeError):
        config.lr = 0.5  # frozen


@pytest.mark.parametrize(
    ("top", "tables", "message"),
    [
        ("seeds = 0", "", "seeds must be a count in [1, 10000] or a non-empty list"),
        ("seeds = [1, 1]", "", "seeds: repeated values: [1, 1]"),
        ('device = "tpu"', "", "device must be one of auto, cpu, cuda, cuda:N, mps, got 'tpu'"),
        ("memory_cap = true", "", "memory_cap must be a size such as '2GiB', got True"),
        ("", "[base]\nseed = 3", "base.seed: set seeds with the top-level 'seeds' key"),
        ("", "[base]\ndevice = 'cpu'", "base.device: set it in [workload]"),
        ("", "[[cases]]\nlr = -1", "cases[0].lr must be a number >= 0, got -1"),
        ("", "[grid.workload_options]\nwidth = 3", "grid.workload_options.width must be a list"),
        ("", "[search]\nn_trials = 0", "search.n_trials must be an integer in [1, 100000], got 0"),
        ("", '[search]\nn_trials = 2\nsampler = "tp"', "unknown search.sampler 'tp' (did you mean"),
        ("", "[search]\nn_trials = 2", "search: needs an objective"),
        (
            "",
            '[search]\nn_trials = 2\nminimize = "final_loss"\n[search.ranges]\nseed = {low=0, high=3}',
            "search.ranges.seed: set seeds with the top-level 'seeds' key",
        ),
        (
            "",
            '[search]\nn_trials = 2\nminimize = "final_loss"\n[search.ranges.lr]\nlow = 1\nhgh = 2',
            "unknown key 'search.ranges.lr.hgh' (did you mean 'high'?)",
        ),
        (
            "",
            '[search]\nn_trials = 2\nminimize = "final_loss"\n[search.ranges]\nlr = {low=1, high=0.5}',
            "search.ranges.lr: low must be < high, got 1 and 0.5",
        ),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_key_path(top, tables, message):
    text = f'# q\nname = "s"\n{top}\n[workload]\nname = "seed-mlp"\n{tables}\n'
    if "[grid" not in tables and "[[cases]]" not in tables:
        text += "[grid]\nbatch_size = [8]\n"
    with pytest.raises(ConfigError) as info:
        parse_spec(tomllib.loads(text), path=Path("s.toml"), text=text)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("s.toml: ")
    assert message in str(info.value)


# -- upper bounds: what the results columns and float32 tensors hold -----------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"seed": 2**63},
            "seed must be at most 2**63 - 1 = 9223372036854775807 (results hold integers as "
            "int64), got 9223372036854775808",
        ),
        ({"batch_size": 2**64}, "batch_size must be at most 2**63 - 1"),
        ({"lr": 1e300}, "lr must be at most 1e+12, got 1e+300"),
        ({"weight_decay": 1001}, "weight_decay must be at most 1000, got 1001"),
        ({"gamma": 2}, "gamma must be at most 1 (a decay factor), got 2"),
        ({"grad_clip": 1e39}, "grad_clip must be at most 3.403e+38 (the largest float32)"),
        ({"time_limit_s": 4e7}, "time_limit_s must be at most 31536000 (a year), got 40000000.0"),
        ({"peak_tflops": 2e6}, "peak_tflops must be at most 1e+06, got 2000000.0"),
    ],
)
def test_a_value_past_an_upper_bound_is_one_line_naming_it(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TrialConfig(**kwargs)
    assert str(info.value).startswith(message)


def test_the_schema_carries_the_upper_bounds():
    fields = config_schema()["properties"]
    assert fields["seed"]["maximum"] == 2**63 - 1
    assert fields["lr"]["maximum"] == 1e12 and fields["gamma"]["maximum"] == 1
    spec = spec_schema()
    assert spec["properties"]["max_points"] == {
        "default": 100000,
        "description": spec["properties"]["max_points"]["description"],
        "maximum": 2**63 - 1,
        "minimum": 1,
        "title": "Max Points",
        "type": "integer",
    }


def fields_accepting(words: str) -> list[str]:
    fields = TrialConfig.__pydantic_fields__.items()
    return [k for k, f in fields if f"text='{words}" in str(f.rebuild_annotation())]


INT_FIELDS, FLOAT_FIELDS = fields_accepting("an integer"), fields_accepting("a number")


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(INT_FIELDS),
    value=st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64])),
)
def test_an_accepted_integer_fits_its_int64_column(key, value):
    import pyarrow as pa

    assert len(INT_FIELDS) == 15 and {"seed", "nproc", "noise_scale_every"} <= set(INT_FIELDS)
    try:
        config = TrialConfig(**{key: value})
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    pa.array([getattr(config, key)], pa.int64())  # raises past int64


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(FLOAT_FIELDS), value=st.floats(allow_nan=True, allow_infinity=True))
def test_an_accepted_float_is_finite_and_fits_float32(key, value):
    import struct

    assert len(FLOAT_FIELDS) == 8 and "lr" in FLOAT_FIELDS
    try:
        config = TrialConfig(**{key: value})
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert math.isfinite(getattr(config, key))
    struct.pack("f", getattr(config, key))  # raises OverflowError past float32
