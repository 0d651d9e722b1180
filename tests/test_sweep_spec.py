"""Sweep spec files: expansion, skipped points, bad specs (one line, exit 2, nothing
written), and a property test that junk never gives a traceback."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import BenchError, ConfigError
from bench.sweep import command
from bench.sweep.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))

GOOD = """\
# Does the loader expand cases x grid x seeds?
name = "t"
device = "cpu"
seeds = [0, 1]

[workload]
name = "teacher-mlp"
options = { width = 16 }

[base]
samples = 100
lr = 0.1

[budget]
epochs = 2

[grid]
batch_size = [10, 50, 200]
"workload_options.depth" = [1, 2]
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expansion_and_skipped_points(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    # 3 batch sizes x 2 depths x 2 seeds = 12 points; b=200 > N=100 is skipped (4 points).
    assert len(spec.points) == 8
    assert len(spec.skipped) == 4
    assert all("exceeds samples" in reason for _, reason in spec.skipped)
    assert {p.config.workload_options["depth"] for p in spec.points} == {1, 2}
    assert all(p.config.workload_options["width"] == 16 for p in spec.points)
    assert {p.config.seed for p in spec.points} == {0, 1}
    assert all(p.config.epochs == 2 and p.config.samples == 100 for p in spec.points)
    assert len({p.key for p in spec.points}) == 8
    assert spec.question == "Does the loader expand cases x grid x seeds?"
    # A grid spec naming no objective ranks by tail_loss: final_loss is one step's noise.
    assert [(o.column, o.direction) for o in spec.objectives] == [("tail_loss", "minimize")]


def test_nested_workload_options_table_equals_dotted_keys(tmp_path):
    nested = GOOD.replace(
        '"workload_options.depth" = [1, 2]', "[grid.workload_options]\ndepth = [1, 2]"
    )
    a = load_spec(write(tmp_path, GOOD, "a.toml"))
    b = load_spec(write(tmp_path, nested, "b.toml"))
    assert [p.key for p in a.points] == [p.key for p in b.points]
    assert a.spec_hash == b.spec_hash


def test_cases_and_mode_normalisation(tmp_path):
    text = """\
# SGD / MBGD / BGD on N=100, 2 epochs: the tutorial's example
name = "modes"
device = "cpu"
[workload]
name = "seed-mlp"
[base]
samples = 100
[budget]
epochs = 2
[[cases]]
mode = "sgd"
[[cases]]
mode = "mbgd"
batch_size = 20
[[cases]]
mode = "bgd"
[grid]
lr = [0.1]
batch_size = [5, 7]
"""
    spec = load_spec(write(tmp_path, text))
    # sgd and bgd ignore the batch_size axis: each collapses to one key.
    modes = sorted(p.config.mode for p in spec.points)
    assert modes == ["bgd", "mbgd", "mbgd", "sgd"]
    assert spec.duplicates == 2
    sgd = next(p for p in spec.points if p.config.mode == "sgd")
    assert sgd.config.batch_size == 1


def test_comment_change_keeps_hash_config_change_does_not(tmp_path):
    a = load_spec(write(tmp_path, GOOD, "a.toml"))
    b = load_spec(write(tmp_path, "# another comment\n" + GOOD, "b.toml"))
    c = load_spec(write(tmp_path, GOOD.replace("lr = 0.1", "lr = 0.2"), "c.toml"))
    assert a.spec_hash == b.spec_hash != c.spec_hash


# case -> (top-level lines, tables after [workload]/[base], text the message must contain)
BAD = {
    "unknown top key": (
        "gird = 1",
        "[grid]\nlr = [1]",
        "unknown key 'gird' (did you mean 'grid'?)",
    ),
    "unknown grid key": (
        "",
        "[grid]\nbatch_sise = [1]",
        "unknown key 'grid.batch_sise' (did you mean 'batch_size'?)",
    ),
    "unknown base key": (
        "",
        "[grid]\nlr = [1]\n[budget]\nepoch = 1",
        "unknown key 'budget.epoch' (did you mean 'epochs'?)",
    ),
    "wrong type in grid": ("", '[grid]\nlr = ["fast"]', "grid.lr[0]"),
    "wrong type in base": (
        "",
        "[grid]\nlr = [1]\n[budget]\nepochs = 1.5",
        "epochs must be an integer",
    ),
    "axis not a list": ("", "[grid]\nlr = 0.1", "grid.lr must be a list"),
    "empty grid": ("", "[grid]", "grid is empty"),
    "empty axis": ("", "[grid]\nlr = []", "grid.lr is empty"),
    "nothing to sweep": ("", "", "nothing to sweep"),
    "unknown sampler": (
        "",
        '[grid]\nlr = [1]\n[search]\nsampler = "grid-search"\nn_trials = 3\nminimize = ["final_loss"]',
        "search.sampler",
    ),
    "objective not a column": (
        "",
        '[grid]\nlr = [1]\n[search]\nn_trials = 3\nmaximize = ["samples_per_sec"]',
        "'samples_per_sec' is not a trials column (did you mean 'samples_per_s'?)",
    ),
    "objective not numeric": (
        "",
        '[grid]\nlr = [1]\n[search]\nn_trials = 3\nminimize = ["status"]',
        "not a numeric trials column",
    ),
    "bad constraint": (
        "",
        '[grid]\nlr = [1]\n[search]\nn_trials = 3\nminimize = ["final_loss"]\nconstraints = ["peak_reserved_bytes <= lots"]',
        "search.constraints[0]",
    ),
    "bad seeds": ('seeds = [0, "one"]', "[grid]\nlr = [1]", "seeds[1]"),
    "bad memory cap": ('memory_cap = "a lot"', "[grid]\nlr = [1]", "memory_cap"),
    "unknown workload": ("", "[grid]\nlr = [1]\n[workload.options]\n", ""),
    "every point invalid": ("", "[grid]\nbatch_size = [500, 600]", "every grid point is invalid"),
}
del BAD["unknown workload"]  # covered in test_other_bad_inputs (it needs a different [workload])


def bad_text(top: str, tables: str) -> str:
    return f'# q\nname = "bad"\ndevice = "cpu"\n{top}\n[workload]\nname = "seed-mlp"\n[base]\nsamples = 100\n{tables}\n'


HEAD = bad_text("", "")


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_bad_spec_names_the_key_and_writes_nothing(tmp_path, case):
    top, tables, expected = BAD[case]
    spec = write(tmp_path, bad_text(top, tables))
    results = tmp_path / "results"
    args = argparse.Namespace(
        spec=spec, workers=1, storage=None, results=results, retry_failed=False, dry_run=False
    )
    with pytest.raises(BenchError) as info:
        command.main(args)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    assert not results.exists()


def test_other_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_spec(write(tmp_path, "name = [unclosed\n"))
    with pytest.raises(ConfigError, match="no spec file"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown workload 'seed-mpl'.*did you mean 'seed-mlp'"):
        load_spec(write(tmp_path, HEAD.replace('"seed-mlp"', '"seed-mpl"') + "[grid]\nlr = [1]\n"))
    with pytest.raises(ConfigError, match="has no option 'widht'.*did you mean 'width'"):
        load_spec(
            write(
                tmp_path,
                HEAD.replace('"seed-mlp"', '"teacher-mlp"')
                + '[grid]\n"workload_options.widht" = [1]\n',
            )
        )
    with pytest.raises(ConfigError, match="must start with a comment"):
        load_spec(write(tmp_path, HEAD.removeprefix("# q\n") + "[grid]\nlr = [1]\n"))
    with pytest.raises(ConfigError, match="sqlite"):
        command.main(
            argparse.Namespace(
                spec=tmp_path / "x",
                workers=1,
                storage="sqlite:///x.db",
                results=tmp_path,
                retry_failed=False,
                dry_run=False,
            )
        )


def test_cli_bad_spec_is_one_line_exit_2(tmp_path):
    spec = write(tmp_path, HEAD + "[grid]\nbatch_sise = [1]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "sweep", str(spec), "--results", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "batch_sise" in proc.stderr and "did you mean 'batch_size'" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_experiments_load_and_say_what_they_ask(path):
    text = path.read_text()
    assert text.startswith("#"), "each experiment starts with a comment saying what it asks"
    spec = load_spec(path, check_workloads=path.name != "gpu-memory.toml")
    assert spec.points
    assert spec.name == path.stem
    assert spec.question and not spec.question.startswith(":")  # not the #:schema line


def test_editor_directives_are_not_part_of_the_question():
    from bench.sweep.spec import header_comment

    text = "#:schema ../docs/spec.schema.json\n# What does b do?\n#\n# Measured.\nname = 'x'\n"
    assert header_comment(text) == "What does b do?\n\nMeasured."


# -- property test: junk in, one-line BenchError out --------------------------------------

KEYS = [
    "name",
    "device",
    "seeds",
    "memory_cap",
    "workload",
    "base",
    "budget",
    "grid",
    "cases",
    "search",
    "options",
    "lr",
    "batch_size",
    "samples",
    "epochs",
    "max_steps",
    "mode",
    "sampler",
    "n_trials",
    "maximize",
    "minimize",
    "constraints",
    "ranges",
    "low",
    "high",
    "log",
    "accumulation_steps",
    "workload_options.width",
    "width",
    "precision",
    "seed",
    "optimizer",
    "time_limit_s",
    "x",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "seed-mlp",
            "teacher-mlp",
            "cpu",
            "tpe",
            "nsga2",
            "sgd",
            "bgd",
            "final_loss",
            "16GiB",
            "peak_reserved_bytes <= 1GiB",
            "x",
            "",
            "t",
            "cuda",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)
junk = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=junk)
def test_junk_spec_never_tracebacks(raw):
    raw = {k: v for k, v in raw.items() if v is not None}
    try:
        parse_spec(raw, text="# junk\n")
    except BenchError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_junk_text_never_tracebacks(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("junk") / "spec.toml"
    path.write_text(text, encoding="utf-8")
    # Malformed TOML, a wrong shape, bad values: all must end as a BenchError.
    with contextlib.suppress(BenchError):
        load_spec(path)


def test_dry_run_lists_points_and_skips(tmp_path, capsys):
    spec = write(tmp_path, GOOD)
    args = argparse.Namespace(
        spec=spec, workers=1, storage=None, results=tmp_path / "r", retry_failed=False, dry_run=True
    )
    assert command.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 4 and "8 distinct points" in out
    assert not (tmp_path / "r").exists()


def ranges_spec(ranges: str) -> str:
    """A search spec whose [search.ranges] table is ``ranges``."""
    return f"""\
# Test: search ranges are checked against the config's types at load.
name = "ranges"
[workload]
name = "seed-mlp"
[grid]
lr = [0.1]
[search]
n_trials = 3
minimize = ["final_loss"]
[search.ranges]
{ranges}
"""


@pytest.mark.parametrize(
    ("ranges", "needle"),
    [
        ("accumulation_steps = { low = 1.5, high = 8 }", "accumulation_steps is an integer key"),
        ("batch_size = { low = 1, high = 64, step = 2.5 }", "batch_size is an integer key"),
        ("drop_last = { low = 0, high = 1 }", "drop_last is not a numeric TrialConfig key"),
        ("restore_best = { low = 0, high = 1 }", "restore_best is not a numeric"),
        ("accumulation_steps = { low = 0, high = 8 }", "search.ranges.accumulation_steps.low"),
        ("momentum = { low = 0.5, high = 1.0 }", "search.ranges.momentum.high"),
    ],
)
def test_search_ranges_checked_against_config_types(tmp_path, ranges, needle):
    path = write(tmp_path, ranges_spec(ranges))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_valid_search_ranges_still_load(tmp_path):
    ranges = """\
weight_decay = { low = 1e-5, high = 1e-2, log = true }
accumulation_steps = { low = 1, high = 8 }
momentum = { low = 0, high = 0.9 }"""
    path = write(tmp_path, ranges_spec(ranges))
    ranges = {r.name: r for r in load_spec(path).search.ranges}
    assert ranges["accumulation_steps"].integer and not ranges["weight_decay"].integer


def test_an_int_and_a_float_of_the_same_value_are_one_trial():
    # TOML's ``lr = 1`` is an int, the CLI's ``--lr 1`` a float: the same experiment
    # must have one trial_key, or a resumed sweep trains it twice.
    from bench.config import TrialConfig

    as_toml = TrialConfig(lr=1, momentum=0, time_limit_s=600, grad_clip=1)
    as_cli = TrialConfig(lr=1.0, momentum=0.0, time_limit_s=600.0, grad_clip=1.0)
    assert as_toml.trial_key == as_cli.trial_key
    assert type(as_toml.lr) is float and as_toml.to_dict() == as_cli.to_dict()


def test_restore_best_without_evaluations_is_an_error():
    from bench.config import TrialConfig

    with pytest.raises(ConfigError, match="restore_best needs evaluations"):
        TrialConfig(restore_best=True, eval_every=0)


# -- --storage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, ("journal", "SWEEP/optuna.journal")),
        ("journal:/data/s.journal", ("journal", "/data/s.journal")),
        ("journal:///data/s.journal", ("journal", "/data/s.journal")),
        ("/data/s.journal", ("journal", "/data/s.journal")),
        ("rel/s.journal", ("journal", "rel/s.journal")),
        ("postgresql+psycopg2://u@h/db", ("postgresql", "postgresql+psycopg2://u@h/db")),
    ],
)
def test_storage_forms(url, expected):
    from bench.sweep.storage import parse_storage

    assert parse_storage(url, Path("SWEEP")) == expected


def test_postgres_urls_get_a_driver_that_is_installed():
    import importlib.util

    from bench.sweep.storage import parse_storage

    for url in ("postgres://u@h/db", "postgresql://u@h/db"):
        kind, target = parse_storage(url, Path("SWEEP"))
        assert kind == "postgresql" and target.endswith("://u@h/db")
        driver = target.split("://", 1)[0].partition("+")[2]
        module = {"": "psycopg", "psycopg2": "psycopg2"}[driver]
        if driver == "" and importlib.util.find_spec("psycopg") is None:
            assert importlib.util.find_spec("psycopg2") is None  # else it would be named
        else:
            assert importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("journal:", "journal:PATH needs a path"),
        ("sqlite:///x.db", "not safe for several worker processes"),
        ("mysql://u@h/db", r"mysql:// is not supported"),
        ("redis://h", r"redis:// is not supported"),
    ],
)
def test_unsupported_storage_is_one_clear_error(url, match):
    from bench.sweep.storage import parse_storage

    with pytest.raises(ConfigError, match=match):
        parse_storage(url, Path("SWEEP"))


def test_postgres_storage_without_a_driver_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    from bench.sweep.storage import parse_storage

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("psycopg", "psycopg2") else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'bench\[postgres\]'"):
        parse_storage("postgresql://u@h/db", tmp_path)


# -- hostile values: one line, exit 2, nothing written -----------------------------------


def hostile(top: str = "", tables: str = "[grid]\nbatch_size = [8]\n") -> str:
    return f'# q\nname = "h"\ndevice = "cpu"\n{top}\n[workload]\nname = "seed-mlp"\n{tables}'


DEEP = "[" * 5000 + "]" * 5000
HOSTILE = {
    "seed past int64": (
        "seeds = [0, 9223372036854775808]",
        "[grid]\nbatch_size = [8]\n",
        "seeds[1] must be at most 2**63 - 1",
    ),
    "samples too large for memory": (
        "",
        "[base]\nsamples = 1000000000000\n[grid]\nbatch_size = [8]\n",
        "its data does not fit in memory",
    ),
    "val_samples too large for memory": (
        "",
        "[workload.options]\nval_samples = 1000000000000\n[grid]\nbatch_size = [8]\n",
        "its data does not fit in memory",
    ),
    "nested 5000 deep": ("", f"[grid]\nbatch_size = {DEEP}\n", "nested too deep"),
    "lr overflows": ("", "[grid]\nlr = [1e300]\n", "grid.lr[0] must be at most 1e+12, got 1e+300"),
    "weight decay overflows": ("", "[base]\nweight_decay = 1e300\n[grid]\nlr = [1]\n", "at most"),
    "gamma grows": ("", "[base]\ngamma = 2.0\n[grid]\nlr = [1]\n", "gamma must be at most 1"),
    "time limit of 1e300 s": (
        "",
        "[budget]\ntime_limit_s = 1e300\n[grid]\nlr = [1]\n",
        "time_limit_s must be at most",
    ),
    "planned steps past int64": (
        "",
        "[base]\nsamples = 100\nepochs = 4611686018427387904\n[grid]\nbatch_size = [1]\n",
        "planned optimizer steps",
    ),
    "sampler seed past numpy's": (
        "",
        '[grid]\nlr = [0.1, 1]\n[search]\nn_trials = 2\nseed = 4294967296\nminimize = "final_loss"\n',
        "search.seed must be at most 2**32 - 1",
    ),
    "memory cap past int64": ('memory_cap = "99999999TiB"', "[grid]\nlr = [1]\n", "memory_cap"),
    "10**12 grid points": (
        "",
        "[grid]\n"
        + "\n".join(
            f"{k} = [{', '.join(str(2**i) for i in range(1, 11))}]"
            for k in (
                "batch_size",
                "accumulation_steps",
                "max_steps",
                "warmup",
                "step_size",
                "grad_norm_every",
                "eval_every",
                "timing_warmup_steps",
                "flush_every",
                "patience",
                "epochs",
                "samples",
            )
        ),  # fmt: skip
        "has 1,000,000,000,000 points",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE), ids=sorted(HOSTILE))
def test_hostile_values_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case):
    top, tables, expected = HOSTILE[case]
    spec = write(tmp_path, hostile(top, tables))
    results = tmp_path / "results"
    from bench.cli import main

    # Not a dry run: a value that passed validation would train and write.
    assert main(["sweep", str(spec), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err
    assert expected in err and "Traceback" not in err, err
    assert not results.exists()


def test_char_lm_data_too_large_is_refused_before_it_is_drawn(tmp_path, capsys):
    from bench.cli import main

    text = hostile("", "[base]\nsamples = 1000000000000\n[grid]\nbatch_size = [8]\n")
    spec = write(tmp_path, text.replace('"seed-mlp"', '"char-lm"'))
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its data does not fit in memory" in err, err


def test_a_grid_is_counted_before_it_is_built(tmp_path, capsys):
    from bench.cli import main

    axis = ", ".join(str(i) for i in range(1, 401))
    text = hostile(
        "", f"[base]\nsamples = 1000\n[grid]\nbatch_size = [{axis}]\nwarmup = [{axis}]\n"
    )
    spec = write(tmp_path, text)
    # 400 x 400 = 160,000 points, over the default limit: refused with the count.
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "has 160,000 points (cases x grid x seeds = 1 x 160,000 x 1)" in err, err
    assert "max_points = 100,000" in err
    # The limit is the spec's to raise; a smaller grid under a lower limit is refused too.
    assert (
        main(
            [
                "sweep",
                str(write(tmp_path, GOOD.replace("seeds = [", "max_points = 2\nseeds = ["))),
                "--dry-run",
            ]
        )
        == 2
    )
    assert "has 12 points" in capsys.readouterr().err
    raised = text.replace('device = "cpu"', 'device = "cpu"\nmax_points = 200000')
    assert load_spec(write(tmp_path, raised)).spec_hash  # expands


def test_max_points_is_not_part_of_the_sweeps_identity(tmp_path):
    a = load_spec(write(tmp_path, GOOD, "a.toml"))
    b = load_spec(
        write(tmp_path, GOOD.replace("seeds = [", "max_points = 50\nseeds = ["), "b.toml")
    )
    assert a.spec_hash == b.spec_hash


def test_dry_run_streams_points_as_they_are_built(tmp_path, capsys, monkeypatch):
    """The listing starts before the grid is expanded: when the first trial line is
    printed, only the configurations before it have been built."""
    import io

    from bench.cli import main
    from bench.config import TrialConfig

    built: list[int] = []
    real = TrialConfig.from_mapping.__func__

    def counting(cls, values, **kw):
        built.append(1)
        return real(cls, values, **kw)

    monkeypatch.setattr(TrialConfig, "from_mapping", classmethod(counting))
    seen_at_first_point: list[int] = []

    class Out(io.StringIO):
        def write(self, s):
            if s.startswith("  ") and not seen_at_first_point:
                seen_at_first_point.append(len(built))
            return super().write(s)

    monkeypatch.setattr(sys, "stdout", Out())
    lrs = ", ".join(str(0.001 * i) for i in range(1, 2001))
    spec = write(tmp_path, hostile("", f"[base]\nsamples = 100\n[grid]\nlr = [{lrs}]\n"))
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    out = sys.stdout.getvalue().splitlines()
    assert len(built) > 2000  # every point was built in the end (and each value checked)
    assert seen_at_first_point and seen_at_first_point[0] < 2000 + 10, seen_at_first_point
    assert out[1].startswith("grid: 2,000 points (cases x grid x seeds = 1 x 2,000 x 1)")
    assert out[-1].startswith("grid: 2000 distinct points, 2000 trials, spec hash ")
    assert sum(line.startswith("  ") for line in out) == 2000


def test_results_must_name_a_folder(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    spec = write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(spec), "--results", "", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--results" in err and "must name a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_a_study_made_under_another_objective_is_refused_in_one_line(tmp_path, capsys):
    """A grid spec naming no objective gets tail_loss; a study of its name that ranks by
    final_loss (same trials) is refused, saying which objective each has, and nothing
    runs or is written."""
    import dataclasses

    from bench.cli import main
    from bench.sweep.spec import Objective, hash_with_objectives
    from bench.sweep.storage import open_storage
    from bench.sweep.study import open_study

    path = write(tmp_path, GOOD)
    spec = load_spec(path)
    old = (Objective("final_loss", "minimize"),)
    older = dataclasses.replace(spec, objectives=old, spec_hash=hash_with_objectives(spec, old))
    assert older.spec_hash != spec.spec_hash
    folder = tmp_path / "results" / "t"
    handle = open_storage(None, folder, "t")
    try:
        open_study(older, handle, folder)
    finally:
        handle.coordination.close()
    journal = (folder / "optuna.journal").read_bytes()
    capsys.readouterr()  # Optuna's own line about the study made above
    assert main(["sweep", str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "ranks its trials by final_loss (minimize), this spec by tail_loss (minimize)" in err
    assert "a grid sweep's default" in err and "new name" in err and str(folder) in err
    assert (folder / "optuna.journal").read_bytes() == journal
    assert not (folder / "trials").exists()
