"""`python -m bench plan` and `bench run`: outputs, and bad input as one line + exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import store
from bench.cli import main


def bench(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def plan_json(capsys, *args):
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_golden_numbers(capsys):
    out = plan_json(
        capsys,
        "--samples",
        "10000",
        "--batch-size",
        "32",
        "--epochs",
        "5",
        "--at-epoch",
        "2",
        "--at-batch",
        "50",
    )
    assert out["micro_batches_per_epoch"] == 313
    assert out["steps_per_epoch"] == 313
    assert out["total_steps"] == 1565
    assert out["effective_batch_size"] == 32
    assert out["global_step"] == 363
    for mode, b, steps in (("sgd", None, 200), ("bgd", None, 2), ("mbgd", "20", 10)):
        args = ["--samples", "100", "--epochs", "2", "--mode", mode] + (
            ["--batch-size", b] if b else []
        )
        assert plan_json(capsys, *args)["total_steps"] == steps
    for window, steps in (("step", 313), ("drop", 312)):
        out = plan_json(
            capsys,
            "--samples",
            "10000",
            "--batch-size",
            "8",
            "--accumulation-steps",
            "4",
            "--partial-window",
            window,
        )
        assert (
            out["micro_batches_per_epoch"],
            out["steps_per_epoch"],
            out["effective_batch_size"],
        ) == (1250, steps, 32)


def test_plan_table_for_humans():
    r = bench("plan", "--samples", "10000", "--batch-size", "32", "--epochs", "5")
    assert r.returncode == 0
    assert "steps per epoch" in r.stdout and "1565" in r.stdout


def test_run_writes_the_results_contract(tmp_path):
    out = tmp_path / "run"
    r = bench(
        "run",
        "--workload",
        "seed-mlp",
        "--samples",
        "100",
        "--batch-size",
        "8",
        "--accumulation-steps",
        "4",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: seed-mlp mbgd b=8 k=4 steps=8/8")
    results = store.load_results(out)
    trial = results.trials.iloc[0]
    assert list(results.trials.columns[: len(store.TRIAL_COLUMNS)]) == list(store.TRIAL_COLUMNS)
    assert list(results.steps.columns) == list(store.STEP_COLUMNS)
    assert trial.status == "ok" and trial.optimizer_steps == 8 and trial.samples_seen == 200
    assert trial.effective_batch_size == 32 and trial.micro_batches == 26
    assert pd.isna(trial.nvml_peak_used_bytes)  # no GPU: null, never 0
    assert trial.cpu_peak_rss_bytes > 0
    assert list(results.steps.step) == list(range(1, 9))
    assert results.steps.samples.tolist() == [32, 32, 32, 4] * 2


def test_run_from_toml_with_flag_override(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        'workload = "teacher-mlp"\nsamples = 64\nbatch_size = 16\nepochs = 1\n[workload_options]\nwidth = 8\n'
    )
    out = tmp_path / "run"
    r = bench(
        "run", "--config", str(config), "--batch-size", "32", "--device", "cpu", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    trial = store.load_results(out).trials.iloc[0]
    assert trial.micro_batch_size == 32 and trial.optimizer_steps == 2
    assert json.loads(trial.config_json)["workload_options"] == {"width": 8}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--accumulaton-steps", "2"], "(did you mean '--accumulation-steps'?)"),
        (["--step-size", "0", "--scheduler", "step"], "step_size must be an integer >= 1"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--accumulation-steps", "0"], "accumulation_steps must be an integer >= 1, got 0"),
        (["--batch-size", "101"], "batch_size 101 exceeds samples 100"),
        (["--workload", "seed-mpl"], "did you mean 'seed-mlp'"),
        (
            ["--option", "widht=3", "--workload", "teacher-mlp"],
            "no option 'widht' (did you mean 'width'?)",
        ),
        (["--lr", "fast"], "invalid float value"),
        (["--device", "tpu"], "device must be one of"),
        (["--config", "missing.toml"], "cannot read missing.toml"),
        (["--config", "bad.toml"], "malformed TOML"),
        (["--config", "unknown.toml"], "unknown key 'batchsize' (did you mean 'batch_size'?)"),
        (["--config", "options.toml", "--option", "width=3"], "workload_options must be a table"),
        (["--workload", ":build"], "expected module:function"),
        (["--workload", "no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
        (["--workload", "wl:raises"], "'wl:raises' cannot be built: ValueError: my factory broke"),
        (["--workload", "wl:data_too_big"], "'wl:data_too_big': its data does not fit in memory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "wl.py").write_text(WL)
    (tmp_path / "bad.toml").write_text("batch_size = [")
    (tmp_path / "unknown.toml").write_text("batchsize = 3\n")
    (tmp_path / "options.toml").write_text('workload_options = "abc"\n')
    out = tmp_path / "out"
    base = [
        "run",
        "--workload",
        "seed-mlp",
        "--samples",
        "100",
        "--batch-size",
        "10",
        "--device",
        "cpu",
    ]
    r = bench(*base, *args, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


WL = """
from bench.workloads import build_workload

def raises(samples=None):
    raise ValueError("my factory broke")

def data_too_big(samples=None):
    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 TB")

def model_too_big(samples=None):
    w = build_workload("seed-mlp", samples=samples)

    def make():
        raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 GiB")

    w.make_model = make
    return w
"""


def test_a_model_too_big_to_build_is_an_oom_row_not_a_traceback(tmp_path):
    (tmp_path / "wl.py").write_text(WL)
    out = tmp_path / "out"
    r = bench("run", "--workload", "wl:model_too_big", "--samples", "64", "--device", "cpu",
              "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("oom: ") and "64.00 GiB" in r.stdout
    trial = pd.read_parquet(out / "trial.parquet").iloc[0]
    assert trial["status"] == "oom" and trial["optimizer_steps"] == 0


@pytest.mark.parametrize("where", ["file", "empty"])
def test_an_unusable_out_is_bad_input_before_any_training(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = {"file": str(tmp_path / "afile" / "sub"), "empty": ""}[where]
    r = bench("run", "--workload", "seed-mlp", "--samples", "64", "--device", "cpu",
              "--out", out, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_step_scheduler_settings_from_flags(tmp_path):
    # Without --step-size / --gamma the CLI could only divide the lr by 10 every step.
    out = tmp_path / "out"
    r = bench("run", "--workload", "seed-mlp", "--samples", "64", "--batch-size", "8",
              "--device", "cpu", "--lr", "0.1", "--scheduler", "step", "--step-size", "4",
              "--gamma", "0.5", "--weight-decay", "0.01", "--grad-norm-every", "1",
              "--peak-tflops", "2", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps["lr"].tolist() == [0.1] * 4 + [0.05] * 4
    assert steps["grad_norm"].notna().all()
    trial = pd.read_parquet(out / "trial.parquet").iloc[0]
    assert trial["peak_flops_per_s"] == 2e12
    assert json.loads(trial["config_json"])["weight_decay"] == 0.01


def test_a_flag_of_another_subcommand_gets_no_suggestion_of_itself():
    r = bench("run", "--fresh", "--out", "x")  # --fresh is bench oom's
    assert r.returncode == 2 and r.stderr.strip() == "bench: error: unrecognized arguments: --fresh"
    r = bench("plan", "--samples", "10", "--lr", "0.1")  # --lr is bench run's
    assert "did you mean" not in r.stderr


def test_plan_bad_input():
    r = bench("plan", "--batch-size", "3")
    assert r.returncode == 2 and r.stderr.strip() == "bench: error: --samples is required"
    r = bench("plan", "--samples", "10", "--batch-size", "2", "--at-epoch", "1", "--at-batch", "6")
    assert r.returncode == 2 and "at-batch must be in 1..5" in r.stderr


# -- one --option parser and one config-from-args for every command ------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("width=3", ("width", 3)),
        (" width = 0.5", ("width", 0.5)),
        ("flag=true", ("flag", True)),
        ('name="a b"', ("name", "a b")),
        ("name=plain text", ("name", "plain text")),
        ("eq=a=b", ("eq", "a=b")),
        ("empty=", ("empty", "")),
    ],
)
def test_parse_option_reads_toml_literals_else_strings(text, expected):
    from bench.cli import parse_option

    assert parse_option(text) == expected


@pytest.mark.parametrize("text", ["width", "=3", "  =3", ""])
def test_parse_option_needs_a_key_and_a_value(text):
    from bench.cli import parse_option
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="--option expects key=value"):
        parse_option(text)


def _run_args(*argv):
    from bench.cli import build_parser

    return build_parser().parse_args(["run", *argv, "--out", "x"])


def test_config_from_args_layers(tmp_path):
    from bench.cli import config_from_args

    toml = tmp_path / "c.toml"
    toml.write_text(
        'workload = "teacher-mlp"\nlr = 0.5\nbatch_size = 4\n[workload_options]\nwidth = 8\ndepth = 2\n'
    )
    args = _run_args("--config", str(toml), "--batch-size", "16", "--option", "width=32")
    config = config_from_args(args, defaults={"optimizer": "adamw", "lr": 0.1})
    assert (config.workload, config.optimizer, config.lr, config.batch_size) == (
        "teacher-mlp",
        "adamw",  # a default nothing overrides
        0.5,  # the file over the default
        16,  # a flag over the file
    )
    assert config.workload_options == {"width": 32, "depth": 2}  # --option over the file's
    assert config_from_args(_run_args("--max-steps", "5")).epochs is None
    assert config_from_args(_run_args("--max-steps", "5", "--epochs", "2")).epochs == 2


def test_config_from_args_errors_name_the_file_or_the_command(tmp_path):
    from bench.cli import config_from_args
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^oom: batch_size must be an integer >= 1, got 0$"):
        config_from_args(_run_args("--batch-size", "0"), where="oom")
    toml = tmp_path / "c.toml"
    toml.write_text("lr = -1\n")
    with pytest.raises(ConfigError, match=rf"^{toml}: lr must be a number >= 0, got -1$"):
        config_from_args(_run_args("--config", str(toml)), where="oom")
    with pytest.raises(ConfigError, match=r"^--workload is required \(or a --config"):
        config_from_args(_run_args(), required=("workload",))


def test_oom_builds_its_config_with_the_same_parser():
    from bench.cli import build_parser
    from bench.errors import ConfigError
    from bench.oom.command import base_config

    def base(*argv):
        return base_config(build_parser().parse_args(["oom", *argv]))

    config = base("--workload", "teacher-mlp", "--option", "width=16", "--precision", "bf16")
    assert config.optimizer == "adamw"  # its state is part of the memory probed
    assert config.workload_options == {"width": 16} and config.precision == "bf16"
    assert base("--workload", "seed-mlp", "--optimizer", "sgd").optimizer == "sgd"
    with pytest.raises(ConfigError, match="--workload is required"):
        base()
    with pytest.raises(ConfigError, match="--option expects key=value"):
        base("--workload", "seed-mlp", "--option", " =3")


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`bench sweep SPEC --dry-run | head -1`: the pipe closes under the writer, which
    is not an error. 3,000 points print more than a pipe's buffer holds."""
    lrs = ", ".join(str(1e-4 * (i + 1)) for i in range(3000))
    spec = tmp_path / "big.toml"
    spec.write_text(
        '# How does lr change the loss?\nname = "big"\ndevice = "cpu"\n'
        '[workload]\nname = "seed-mlp"\n[base]\nsamples = 200\n[budget]\nepochs = 1\n'
        f"[grid]\nlr = [{lrs}]\n"
    )
    cmd = [sys.executable, "-m", "bench", "sweep", str(spec), "--dry-run"]
    cmd += ["--results", str(tmp_path / "results")]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline()  # one line, then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# -- hostile values: one line, exit 2, nothing written -----------------------------------

DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(2**63)], "seed must be at most 2**63 - 1 = 9223372036854775807"),
        (["--samples", str(2**63)], "samples must be at most 2**63 - 1"),
        (["--max-steps", str(2**64)], "max_steps must be at most 2**63 - 1"),
        (["--lr", "1e300"], "lr must be at most 1e+12, got 1e+300"),
        (["--weight-decay", "1e300"], "weight_decay must be at most 1000"),
        (["--gamma", "2", "--scheduler", "step"], "gamma must be at most 1"),
        (["--grad-clip", "1e300"], "grad_clip must be at most"),
        (["--time-limit-s", "1e300"], "time_limit_s must be at most 31536000"),
        (["--peak-tflops", "1e300"], "peak_tflops must be at most"),
        (["--epochs", str(2**62)], "planned optimizer steps"),
        (["--config", "deep.toml"], "deep.toml: nested too deep"),
        (["--config", "deep_value.toml"], "deep_value.toml: nested too deep"),
        (["--option", f"x={DEEP}"], "--option x: nested too deep"),
        (["--samples", str(10**12)], "its data does not fit in memory"),
        (["--option", f"val_samples={10**12}"], "its data does not fit in memory"),
    ],
)
def test_values_past_what_a_column_or_a_float_holds_are_refused(tmp_path, capsys, args, message):
    (tmp_path / "deep.toml").write_text(f"batch_size = {DEEP}\n")
    # Parsable, but deeper than any config: refused before it reaches validation.
    (tmp_path / "deep_value.toml").write_text(f"[workload_options]\nx = {'[' * 100}{']' * 100}\n")
    out = tmp_path / "out"
    argv = ["run", "--workload", "seed-mlp", "--samples", "100", "--batch-size", "10"]
    argv += ["--device", "cpu", *args, "--out", str(out)]
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


def test_oom_config_nested_too_deep_is_one_line(tmp_path, capsys):
    (tmp_path / "deep.toml").write_text(f"batch_size = {DEEP}\n")
    assert main(["oom", "--config", str(tmp_path / "deep.toml"), "--workload", "seed-mlp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deep" in err, err


def test_the_largest_int64_seed_trains_and_is_written(tmp_path):
    out = tmp_path / "out"
    r = bench("run", "--workload", "seed-mlp", "--samples", "64", "--batch-size", "32",
              "--device", "cpu", "--seed", str(2**63 - 1), "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert store.load_results(out).trials.iloc[0].seed == 2**63 - 1


# -- one meaning for a budget -------------------------------------------------------------
# N = 40, b = 10: 4 steps an epoch. Each budget as plan, run and a sweep's [budget] read it.
BUDGETS = [
    ({}, 4),  # neither: one epoch
    ({"epochs": 2}, 8),
    ({"max_steps": 6}, 6),  # max_steps alone: as many epochs as it takes (2)
    ({"max_steps": 3}, 3),
    ({"epochs": 2, "max_steps": 6}, 6),  # both: whichever ends first
    ({"epochs": 1, "max_steps": 6}, 4),
]


def _flags(budget):
    return [w for k, v in budget.items() for w in (f"--{k.replace('_', '-')}", str(v))]


@pytest.mark.parametrize("budget, steps", BUDGETS)
def test_plan_run_and_sweep_agree_on_every_budget(capsys, tmp_path, budget, steps):
    import tomllib

    from bench.sweep.spec import parse_spec

    assert (
        plan_json(capsys, "--samples", "40", "--batch-size", "10", *_flags(budget))["total_steps"]
        == steps
    )
    out = tmp_path / "run"
    common = ["--workload", "seed-mlp", "--samples", "40", "--batch-size", "10"]
    assert main(["run", *common, *_flags(budget), "--device", "cpu", "--out", str(out)]) == 0
    trial = pd.read_parquet(out / "trial.parquet").iloc[0]
    assert (trial["planned_steps"], trial["optimizer_steps"]) == (steps, steps)
    lines = [f"{k} = {v}" for k, v in budget.items()]
    text = (
        '# budgets\nname = "b"\ndevice = "cpu"\nseeds = [0]\n[workload]\nname = "seed-mlp"\n'
        "[base]\nsamples = 40\n[budget]\n" + "\n".join(lines) + "\n[[cases]]\nbatch_size = 10\n"
    )
    (point,) = parse_spec(tomllib.loads(text), text=text).points
    assert point.config.plan(40).total_steps == steps
    # The sweep's trial is the run's configuration: the same key, so the same training.
    assert point.config.to_dict() == json.loads(trial["config_json"])


def test_at_epoch_past_the_run_names_the_budget_that_ends_it(capsys):
    base = ["plan", "--samples", "40", "--batch-size", "10", "--at-epoch", "3", "--at-batch", "1"]
    assert main([*base, "--epochs", "2"]) == 0
    said = capsys.readouterr().out
    assert "after 2 epoch(s), 8 optimizer steps" in said and "max_steps" not in said
    assert main([*base, "--max-steps", "6"]) == 0
    assert "the run ends at max_steps = 6, in epoch 2" in capsys.readouterr().out
    assert main([*base, "--epochs", "2", "--max-steps", "20"]) == 0
    assert "max_steps" not in capsys.readouterr().out.split("reaches no optimizer step")[1]
    out = plan_json(capsys, *base[1:], "--max-steps", "10")
    assert out["global_step"] == 9 and "no_step_reason" not in out
