"""Hostile spec documents through the command line.

Whatever the file holds (huge or negative integers, 1e300, inf, nan, a value nested
thousands of brackets deep, unknown keys, wrong types, broken TOML), ``bench sweep SPEC
--dry-run`` ends with exit 0 (a valid spec) or exit 2 and one line on stderr, never a
traceback, and a refused spec writes nothing, dry run or not.

Documents are mostly well formed with plausible values, so that the hostile value in
them meets the later checks too (expansion, a workload's data, a plan), not only the
first one. ``--hypothesis-show-statistics`` shows how many were valid and what refused
the others.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.config import TrialConfig

CONFIG_KEYS = sorted(TrialConfig.__pydantic_fields__)
INTS = [-1, 0, 1, 2, 3, 8, 100, 2**31 - 1, 2**40, 2**53 + 1, 2**63 - 1, 2**63, 2**64]
INTS += [10**12, 10**30]
FLOATS = [0.0, -0.0, 1e-300, 0.05, 0.5, 1.0, 2.0, 1e3, 1000.5, 1e38, 1e300, -1e300]
FLOATS += [math.inf, -math.inf, math.nan]
STRINGS = ["seed-mlp", "teacher-mlp", "char-lm", "cpu", "cuda:99", "", "x", "é", "a\nb"]
STRINGS += ["16GiB", "99999999TiB", "0B", "final_loss", "peak_reserved_bytes <= 1GiB"]
STRINGS += ["tpe", "random", "nsga2", "sgd", "bgd", "mbgd", "adamw", "step", "cosine", "fp64"]


class Raw(str):
    """TOML text written as is: a value nested brackets deep."""


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy, percent_rare: int):
    """``common``, or ``rare`` about ``percent_rare`` times in a hundred."""
    return st.integers(0, 99).flatmap(lambda r: rare if r >= 100 - percent_rare else common)


deep = st.sampled_from([30, 100, 400, 5000]).map(lambda n: Raw("[" * n + "]" * n))
scalars = st.one_of(
    st.sampled_from(INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(STRINGS),
)
anything = mostly(
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(
                st.sampled_from(["low", "high", "log", "step", "x"]), inner, max_size=3
            ),
        ),
        max_leaves=6,
    ),
    deep,
    8,
)
# What a spec would hold, per key.
PLAUSIBLE = {
    "samples": st.integers(8, 300),
    "batch_size": st.integers(1, 64),
    "accumulation_steps": st.integers(1, 4),
    "epochs": st.integers(1, 2),
    "max_steps": st.integers(1, 5),
    "lr": st.floats(0.001, 1.0),
    "momentum": st.floats(0.0, 0.9),
    "mode": st.sampled_from(["sgd", "mbgd", "bgd"]),
    "time_limit_s": st.floats(1.0, 60.0),
    "workload_options.val_samples": st.integers(1, 300),
}
keys = mostly(st.sampled_from(sorted(PLAUSIBLE)), st.sampled_from([*CONFIG_KEYS, "x"]), 25)


def setting(key: str) -> st.SearchStrategy:
    """Mostly what the key takes, sometimes anything."""
    return mostly(PLAUSIBLE[key], anything, 15) if key in PLAUSIBLE else anything


def table(value_of) -> st.SearchStrategy:
    pair = keys.flatmap(lambda k: value_of(k).map(lambda v: (k, v)))
    return st.lists(pair, min_size=1, max_size=3, unique_by=lambda kv: kv[0]).map(dict)


base_table = table(setting)
grid_table = table(
    lambda k: mostly(st.lists(setting(k), min_size=1, max_size=3, unique_by=repr), anything, 10)
)
search_table = st.fixed_dictionaries(
    {"n_trials": mostly(st.integers(1, 3), scalars, 20), "minimize": st.just("final_loss")},
    optional={
        "sampler": mostly(st.sampled_from(["random", "tpe", "nsga2"]), scalars, 20),
        "seed": mostly(st.integers(0, 2**32 + 1), scalars, 20),
        "constraints": anything,
        "ranges": st.dictionaries(st.sampled_from(["lr", "batch_size", "momentum", "x"]), anything),
    },
)
documents = st.fixed_dictionaries(
    {
        "name": mostly(st.just("fuzz"), scalars, 5),
        "device": st.just("cpu"),
        "workload": st.fixed_dictionaries(
            {"name": mostly(st.sampled_from(["seed-mlp", "teacher-mlp"]), scalars, 5)},
            optional={"options": table(setting)},
        ),
        "grid": grid_table,
    },
    optional={
        "seeds": mostly(st.integers(1, 3), anything, 30),
        "memory_cap": mostly(st.sampled_from(["1GiB", 2**30]), anything, 30),
        "max_points": mostly(st.integers(1, 100), scalars, 30),
        "x": anything,
        "base": base_table,
        "budget": base_table,
        "cases": st.lists(base_table, max_size=2),
        "search": search_table,
    },
)


def toml_value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else {math.inf: "inf", -math.inf: "-inf"}.get(v, repr(v))
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict) -> str:
    """``doc`` as a TOML file: scalars first, then one [table] (or [[cases]]) each."""
    lines = ["# What does a hostile spec do?"]
    tables = {k: v for k, v in doc.items() if isinstance(v, dict) or k == "cases"}
    lines += [f"{k} = {toml_value(v)}" for k, v in doc.items() if k not in tables]
    for name, body in tables.items():
        for one in body if name == "cases" and isinstance(body, list) else [body]:
            lines.append(f"[[{name}]]" if name == "cases" else f"[{name}]")
            lines += [f"{json.dumps(k)} = {toml_value(x)}" for k, x in one.items()]
    return "\n".join(lines) + "\n"


def mangled(text: str, cut: int, junk: str) -> str:
    """The document with junk written over part of it: broken TOML, mostly."""
    at = cut % (len(text) + 1)
    return text[:at] + junk + text[at + len(junk) :]


spec_texts = mostly(
    documents.map(toml_document),
    st.builds(mangled, documents.map(toml_document), st.integers(0, 2000), st.text(max_size=8)),
    15,
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(text=spec_texts)
def test_any_spec_is_exit_0_or_one_line_exit_2_and_a_refused_one_writes_nothing(
    text, tmp_path, capsys
):
    spec = tmp_path / "spec.toml"
    spec.write_text(text, encoding="utf-8")
    results = tmp_path / "results"
    rc = main(["sweep", str(spec), "--dry-run", "--results", str(results)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    assert not results.exists()
    # The first words after the file name say what refused the spec.
    event(f"exit {rc}" + (": " + " ".join(err.split(": ", 3)[-1].split()[:2]) if rc else ""))
    if rc == 0:
        assert err == "", err
        return
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err
    # Not a dry run: the same refusal, before anything is written.
    assert main(["sweep", str(spec), "--results", str(results)]) == 2
    assert capsys.readouterr().err == err
    assert not results.exists()
