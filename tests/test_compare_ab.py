"""scripts/compare_ab.py: the A/B driver behind `nox -s compare`."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.store import load_results
from bench.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_ab", REPO / "scripts" / "compare_ab.py")
compare_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_ab)


def test_round_spec_renames_the_sweep_and_pins_one_seed(tmp_path):
    text = (REPO / "experiments" / "smoke.toml").read_text()
    path = tmp_path / "r.toml"
    path.write_text(compare_ab.round_spec(text, "-r3", 3))
    spec = load_spec(path)
    original = load_spec(REPO / "experiments" / "smoke.toml")
    assert spec.name == f"{original.name}-r3" and spec.seeds == (3,)

    # Everything else as it was: the workload's own `name` and every grid point.
    def grid(s):
        return {tuple(sorted((k, v) for k, v in p.params.items() if k != "seed")) for p in s.points}

    assert grid(spec) == grid(original) and len(original.points) == 4 * len(spec.points)
    assert {p.config.workload for p in spec.points} == {"seed-mlp"}


def test_round_spec_adds_seeds_where_the_spec_has_none():
    text = 'name = "s"\n\n[workload]\nname = "seed-mlp"\n'
    out = compare_ab.round_spec(text, "-r0", 0)
    assert out.startswith('name = "s-r0"\nseeds = [0]\n') and 'name = "seed-mlp"' in out


def test_merge_refuses_a_trial_in_two_rounds(tmp_path):
    for r in ("a", "b"):
        (tmp_path / r / "trials").mkdir(parents=True)
        (tmp_path / r / "trials" / "k1.parquet").write_bytes(b"x")
    with pytest.raises(SystemExit, match="k1.parquet is in two rounds"):
        compare_ab.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")


def test_two_rounds_against_head_end_to_end(tmp_path):
    if subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True
    ).returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "ab"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare_ab.py"), "--base", "HEAD",
         "--rounds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr  # 1: a (noisy) regression was called
    assert "Result:" in done.stdout
    order = re.findall(r"round (\d+) (base|candidate):", done.stdout)
    # A B, then B A: neither side always goes first.
    assert order == [("0", "base"), ("0", "candidate"), ("1", "candidate"), ("1", "base")]
    for side in ("base", "candidate"):
        trials = load_results(out / side).trials
        assert sorted(set(trials["seed"])) == [0, 1] and len(trials) == 12
        assert (trials["status"] == "ok").all()
    listed = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True
    )
    assert str(out / "base-src") not in listed.stdout  # the worktree is gone


def test_unknown_base_is_one_line_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare_ab.py"), "--base", "no-such-ref-x",
         "--out", str(tmp_path / "ab")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "no git commit 'no-such-ref-x'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_comment_names_commits_machine_settings_and_the_rerun(tmp_path, monkeypatch):
    env = {
        "cpu_model": "Test CPU 9000",
        "cpu_usable_cores": 3,
        "packages": {"torch": "2.13.0+cpu"},
        "cuda_devices": [],
    }
    (tmp_path / "candidate" / "env").mkdir(parents=True)
    (tmp_path / "candidate" / "env" / "e.json").write_text(json.dumps(env))
    monkeypatch.setenv("GITHUB_RUN_ID", "77")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    table = "## bench compare\n\n| configuration | ... | verdict |\n| a | ... | regressed |\n"
    body = compare_ab.comment_body(
        table, base="HEAD", out=tmp_path, rounds=4, compare_args=["--threshold", "10%"],
        artifact="art",
    )  # fmt: skip
    lines = body.splitlines()
    assert lines[0] == compare_ab.COMMENT_MARKER
    assert lines[3].startswith("- base: `") and lines[4].startswith("- candidate: `")
    assert "- machine: Test CPU 9000, 3 cores, torch 2.13.0+cpu, no GPU; trials on ?" in lines
    assert "- 4 rounds (A B B A ..., one seed of each side per round), threshold 10%" in lines
    assert "| a | ... | regressed |" in lines and "## bench compare" not in lines
    assert lines[-4:-1] == [
        "gh run download 77 -R o/r -n art -D art",
        "cd art",
        "python -m bench compare base candidate --threshold 10%",
    ]
    assert compare_ab.threshold_of([]) == "5% (default)"
    assert compare_ab.threshold_of(["--threshold=3%"]) == "3%"
