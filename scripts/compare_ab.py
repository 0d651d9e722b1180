#!/usr/bin/env python3
"""A/B on this machine: a sweep spec run by a base commit's code and by this tree's,
seed by seed in alternating order, then ``bench compare`` (what ``nox -s compare`` runs).

Why not one sweep a side: the seeds of one sweep run in the same worker processes, and
on these CPUs a process's small-step timings move together. Measured on the 2-core dev
machine (2026-12-01): the same code, ``experiments/smoke.toml`` twice back to back,
B = 32 samples/s 83,059 vs 54,711 with all four seeds of one sweep above all four of
the other (Mann–Whitney p = 0.029, "regressed"); three such pairs gave -34 %, +10 % and
+39 %. Seeds of one sweep are then not independent repeats, and the test over them calls
one process's luck a regression. Here each seed of each side is its own sweep (its own
processes), in the order A B B A B A A B ..., so drift and process luck land on both
sides; the per-side folders are then merged and compared as usual.

And one torch thread per worker by default (``--threads``): on 2 cores, the smoke
sweep's tiny steps with 2 threads took 0.31-0.78 ms at B = 8, varying from seed to seed
and sweep to sweep; with 1 thread, 0.202-0.213 ms in four sweeps (the same day).

    python scripts/compare_ab.py                        # base: main, seeds 0-5
    python scripts/compare_ab.py --base HEAD~1 --rounds 6 -- --threshold 10%
    python scripts/compare_ab.py --comment comment.md --report   # what CI runs

Writes under ``--out`` (default results/compare-ab): ``base/`` and ``candidate/`` (the
merged results, what bench compare reads), ``rounds/`` (one sweep each), ``specs/``,
with ``--report`` ``report/base/`` and ``report/candidate/`` (bench report's HTML), and
with ``--comment FILE`` a pull-request comment: the table with both commits, the machine,
rounds, threshold and the command that re-runs the comparison from the two folders.
Exit status: bench compare's (0 no regression, 1 a regression, 2 bad input).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def round_spec(text: str, name_suffix: str, seed: int) -> str:
    """The spec with its top-level ``name`` suffixed and ``seeds = [seed]``. Only the
    part before the first table is touched (``[workload]`` has a ``name`` too)."""
    m = re.search(r"^\s*\[", text, flags=re.M)
    head, tail = (text[: m.start()], text[m.start() :]) if m else (text, "")
    head, n = re.subn(
        r'^(name\s*=\s*")([^"]+)(")', rf"\g<1>\g<2>{name_suffix}\g<3>", head, count=1, flags=re.M
    )
    if n != 1:
        raise SystemExit('compare_ab: the spec has no top-level name = "..." line')
    head, n = re.subn(r"^seeds\s*=.*$", f"seeds = [{seed}]", head, count=1, flags=re.M)
    if n == 0:
        head = head.rstrip("\n") + f"\nseeds = [{seed}]\n\n"
    return head + tail


def merge(folders: list[Path], into: Path) -> Path:
    """One results folder from several sweeps' (their trials have distinct keys: one
    seed each)."""
    shutil.rmtree(into, ignore_errors=True)
    for sub in ("trials", "steps", "env"):
        (into / sub).mkdir(parents=True, exist_ok=True)
        for folder in folders:
            for path in sorted((folder / sub).glob("*")):
                if (into / sub / path.name).exists() and sub != "env":
                    raise SystemExit(f"compare_ab: {path.name} is in two rounds' results")
                shutil.copy2(path, into / sub / path.name)
    return into


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


# Marks the one comment a workflow updates on each push instead of adding another.
COMMENT_MARKER = "<!-- bench-compare -->"


def commit_line(ref: str, *, tree: bool = False) -> str:
    """``abc1234567 subject`` of a commit; with ``tree`` (the candidate: this checkout)
    ``+ uncommitted changes`` when tracked files differ from it."""
    shown = git("log", "-1", "--format=%H %s", ref).stdout.strip() or ref
    sha, _, subject = shown.partition(" ")
    subject = subject if len(subject) <= 72 else subject[:71] + "…"
    line = f"`{sha[:10]}` {subject}".rstrip()
    if tree and git("status", "--porcelain", "--untracked-files=no").stdout.strip():
        line += " + uncommitted changes"
    return line


def machine_line(results: Path) -> str:
    """CPU model, usable cores, torch and device(s), from the environment records a
    sweep writes (``env/*.json``) and the trials' device column."""
    parts = set()
    for path in sorted((results / "env").glob("*.json")):
        env = json.loads(path.read_text(encoding="utf-8"))
        gpus = ", ".join(d["name"] for d in env.get("cuda_devices") or []) or "no GPU"
        cores = env.get("cpu_usable_cores") or env.get("cpu_count")
        torch_v = (env.get("packages") or {}).get("torch")
        parts.add(f"{env.get('cpu_model')}, {cores} cores, torch {torch_v}, {gpus}")
    devices = sorted(trial_devices(results)) or ["?"]
    return f"{'; '.join(sorted(parts)) or 'unknown'}; trials on {', '.join(devices)}"


def trial_devices(results: Path) -> set[str]:
    import pyarrow.parquet as pq  # a dependency of bench; only the comment needs it

    return {
        d
        for path in (results / "trials").glob("*.parquet")
        for d in pq.read_table(path, columns=["device"]).column("device").to_pylist()
        if d
    }


def threshold_of(compare_args: list[str]) -> str:
    for i, arg in enumerate(compare_args):
        if arg == "--threshold" and i + 1 < len(compare_args):
            return compare_args[i + 1]
        if arg.startswith("--threshold="):
            return arg.split("=", 1)[1]
    return "5% (default)"


def rerun_lines(out: Path, artifact: str, compare_args: list[str]) -> tuple[str, list[str]]:
    """Where the two folders are, and the commands that give the same table from them:
    the Actions run's artifact when run there (GITHUB_RUN_ID set), else ``out``."""
    compare = " ".join(["python -m bench compare base candidate", *compare_args])
    run_id, repo = os.environ.get("GITHUB_RUN_ID"), os.environ.get("GITHUB_REPOSITORY")
    if not (run_id and repo):
        return f"`{out}`", [f"cd {out}", compare]
    url = (
        f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{repo}/actions/runs/{run_id}"
    )
    fetch = f"gh run download {run_id} -R {repo} -n {artifact} -D {artifact}"
    return f"the artifact `{artifact}` of [run {run_id}]({url})", [fetch, f"cd {artifact}", compare]


def comment_body(
    table: str, *, base: str, out: Path, rounds: int, compare_args: list[str], artifact: str
) -> str:
    """The pull-request comment: who was compared with whom, where, how, the table, and
    the commands that give the same table from the two results folders."""
    where, commands = rerun_lines(out, artifact, compare_args)
    return "\n".join(
        [
            COMMENT_MARKER,
            "## bench compare: base vs candidate",
            "",
            f"- base: {commit_line(base)}",
            f"- candidate: {commit_line('HEAD', tree=True)}",
            f"- machine: {machine_line(out / 'candidate')}",
            f"- {rounds} rounds (A B B A ..., one seed of each side per round), "
            f"threshold {threshold_of(compare_args)}",
            "",
            re.sub(r"^## bench compare\n+", "", table.strip()),
            "",
            f"Re-run from {where} (its `base/` and `candidate/` folders), with bench "
            "installed at the candidate commit:",
            "",
            "```",
            *commands,
            "```",
            "",
        ]
    )


def run_rounds(
    trees: dict[str, Path], texts: dict[str, str], out: Path, n: int, threads: int
) -> dict[str, list[Path]] | int:
    """Each side's sweep folders, one per round, in the order A B B A ...; or the exit
    status of a sweep that failed outright."""
    rounds: dict[str, list[Path]] = {"base": [], "candidate": []}
    t0 = time.monotonic()
    for r in range(n):
        order = ("base", "candidate") if r % 4 in (0, 3) else ("candidate", "base")
        for side in order:
            spec = out / "specs" / f"{side}-r{r}.toml"
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(round_spec(texts[side], f"-r{r}", r), encoding="utf-8")
            results = out / "rounds" / side
            sweep = ["sweep", str(spec), "--results", str(results), "--threads", str(threads)]
            # Each tree's own code: `python -m bench` imports ./bench from the cwd.
            done = subprocess.run(
                [sys.executable, "-m", "bench", *sweep],
                cwd=trees[side],
                capture_output=True,
                text=True,
            )
            last = (done.stderr.strip().splitlines() or [""])[-1]
            print(f"[{time.monotonic() - t0:5.1f} s] round {r} {side}: {last}", flush=True)
            # 1: some trial failed; still results (compare calls it a status change).
            if done.returncode not in (0, 1):
                print(done.stderr[-4000:], file=sys.stderr)
                return done.returncode
            rounds[side].append(next(results.glob(f"*-r{r}")))
    return rounds


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git ref of the baseline (default main)")
    parser.add_argument(
        "--spec", default="experiments/smoke.toml", help="sweep spec (each tree's own)"
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="seeds 0..R-1, one round each (default 6)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "compare-ab")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per sweep worker (default 1)"
    )
    parser.add_argument(
        "--comment", type=Path, help="write a pull-request comment (markdown) to this file"
    )
    parser.add_argument(
        "--artifact",
        default="bench-compare",
        help="the uploaded artifact's name, for the comment's re-run command",
    )
    parser.add_argument(
        "--report", action="store_true", help="also bench report's HTML of each side"
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (bench compare needs repeats)")
    if git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}").returncode != 0:
        print(
            f"compare_ab: error: no git commit {args.base!r} (try --base origin/main)",
            file=sys.stderr,
        )
        return 2

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)  # sweeps resume: old rounds would be reused
    src = out / "base-src"
    out.mkdir(parents=True)
    git("worktree", "prune")
    added = git("worktree", "add", "--detach", str(src), args.base)
    if added.returncode != 0:
        print(f"compare_ab: error: git worktree add: {added.stderr.strip()}", file=sys.stderr)
        return 2
    trees = {"base": src, "candidate": ROOT}
    try:
        texts = {}
        for side, tree in trees.items():
            spec = tree / args.spec
            if not spec.is_file():
                print(f"compare_ab: error: {side} has no {args.spec}", file=sys.stderr)
                return 2
            texts[side] = spec.read_text(encoding="utf-8")
        rounds = run_rounds(trees, texts, out, args.rounds, args.threads)
        if isinstance(rounds, int):
            return rounds
        merged = {side: merge(folders, out / side) for side, folders in rounds.items()}
    finally:
        git("worktree", "remove", "--force", str(src))
    cmd = [sys.executable, "-m", "bench", "compare", str(merged["base"]), str(merged["candidate"])]
    done = subprocess.run([*cmd, *passthrough], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    if args.comment and done.returncode in (0, 1):
        body = comment_body(
            done.stdout,
            base=args.base,
            out=out,
            rounds=args.rounds,
            compare_args=passthrough,
            artifact=args.artifact,
        )
        args.comment.parent.mkdir(parents=True, exist_ok=True)
        args.comment.write_text(body, encoding="utf-8")
    if args.report:
        for side, folder in merged.items():
            report = [sys.executable, "-m", "bench", "report", str(folder)]
            subprocess.run([*report, "--out", str(out / "report" / side)], cwd=ROOT, check=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
