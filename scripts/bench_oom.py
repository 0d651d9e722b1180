"""Benchmark of ``bench oom``: the bisection search against the memory-model search
(both confirmed R = 3 times), on the cases of issue 16, interleaved, plus PyTorch
Lightning's ``Tuner.scale_batch_size(mode="binsearch")`` under the same cap with its
answer checked in a fresh process.

    python scripts/bench_oom.py [--rounds N] [--cases a,b] [--methods m,n] [--lightning]
                                [--out FILE]

Each (round, case, method) runs ``python -m bench oom --json`` in its own results
folder, so no run reuses another's probes; the order of the methods alternates between
rounds, so a change in machine load falls on both; with ``--lightning`` Lightning's
search runs once a round, next to bench's on teacher-1024. Prints a markdown table
(medians over rounds, min-max) with the 1-minute load average, and writes every run as
JSON. "Real probes" are fresh capped processes that decide the boundary (search +
confirmation); the model search's ladder is one more process, its jobs listed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "teacher-1024": (["--workload", "teacher-mlp", "--option", "width=1024", "--samples",
                      "16384"], "600MiB", 0),
    "teacher-2048": (["--workload", "teacher-mlp", "--option", "width=2048"], "600MiB", 10),
    "char-lm": (["--workload", "char-lm"], "800MiB", 0),
    "resnet-bn": (["--workload", "resnet", "--samples", "4096"], "700MiB", 0),
}  # fmt: skip
METHODS = ("bisect", "model")


def run_bench_oom(case: str, method: str, folder: Path, confirm: int = 3) -> dict:
    argv, capacity, margin = CASES[case]
    cmd = [sys.executable, "-m", "bench", "oom", *argv, "--capacity", capacity, "--margin",
           str(margin), "--search", method, "--confirm", str(confirm), "--results",
           str(folder), "--json"]  # fmt: skip
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"case": case, "method": method, "error": done.stderr[-500:], "wall_s": wall}
    c = json.loads(done.stdout)["capacities"][0]
    margin_probes = (c.get("margin_search") or {}).get("new_probes", 0)
    return {
        "case": case,
        "method": method,
        "boundary": c["boundary"],
        "first_oom": c["first_oom"],
        "exact": c["exact"],
        "band": c["band"],
        "search_probes": c["probes"],
        "confirm_probes": c["confirm_probes"],
        "real_probes": c["new_probes"],
        "margin_probes": margin_probes,
        "safe_batch": c["boundary_after_margin"],
        "predicted": (c.get("model") or {}).get("predicted"),
        "ladder_jobs": len((c.get("model") or {}).get("ladder") or []),
        "wall_s": round(wall, 1),
        "load_1min": round(load, 2),
        "confirm": confirm,
    }


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:g}"
    return f"{med:g} ({min(values):g}-{max(values):g})"


def table(runs: list[dict]) -> str:
    lines = [
        "| case | method | boundary (first OOM) | exact / band | real probes: search + confirm "
        "(+ margin) | ladder jobs | predicted b | wall s | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        for method in METHODS:
            rs = [r for r in runs if r["case"] == case and r["method"] == method]
            ok = [r for r in rs if "error" not in r]
            if not rs:
                continue
            if not ok:
                lines.append(f"| {case} | {method} | error: {rs[0]['error'][-80:]} | | | | | | |")
                continue
            answers = sorted({f"{r['boundary']} ({r['first_oom']})" for r in ok})
            shape = sorted({"exact" if r["exact"] else f"band {r['band']}" for r in ok})
            probes = spread([r["real_probes"] for r in ok])  # the margin search's apart
            split = (
                spread([r["search_probes"] for r in ok])
                + " + "
                + spread([r["confirm_probes"] for r in ok])
            )
            margin = (
                spread([r["margin_probes"] for r in ok])
                if any(r["margin_probes"] for r in ok)
                else ""
            )
            lines.append(
                f"| {case} | {method} | {', '.join(answers)} | {', '.join(shape)} | {probes}: "
                f"{split}{f' (+ {margin})' if margin else ''} | "
                f"{spread([r['ladder_jobs'] for r in ok]) if method == 'model' else '-'} | "
                f"{', '.join(str(r['predicted']) for r in ok if r['predicted']) or '-'} | "
                f"{spread([r['wall_s'] for r in ok])} | {spread([r['load_1min'] for r in ok])} |"
            )
    return "\n".join(lines)


# -- Lightning's binsearch under the same cap ------------------------------------------------

LIGHTNING = r"""
import json, resource, sys, time
cap, mode, batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))  # before torch is imported
import torch
import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner
from bench.workloads import build_workload

w = build_workload("teacher-mlp", samples=16384, options={"width": 1024})
x, y = w.train

class Module(pl.LightningModule):
    def __init__(self, batch_size):
        super().__init__()
        self.batch_size, self.tried, self.net = batch_size, [], w.make_model()
    def training_step(self, batch, _):
        bx, by = batch
        return torch.nn.functional.cross_entropy(self.net(bx), by)
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)
    def train_dataloader(self):
        self.tried.append(self.batch_size)
        ds = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=True)

t0 = time.perf_counter()
m = Module(batch)
kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False)
if mode == "tune":
    trainer = pl.Trainer(max_epochs=1, **kw)
    found = Tuner(trainer).scale_batch_size(m, mode="binsearch", steps_per_trial=3, init_val=batch,
                                            max_trials=25)
    print(json.dumps({"answer": found, "trials": len(m.tried), "wall_s": time.perf_counter() - t0}))
else:
    try:
        pl.Trainer(max_steps=3, **kw).fit(m)
        print(json.dumps({"status": "ok"}))
    except RuntimeError as exc:
        print(json.dumps({"status": "oom" if "alloc" in str(exc) else f"failed: {exc}"[:200]}))
"""


def lightning(cap_bytes: int, checks: int) -> dict:
    """Lightning's answer for teacher-1024 under RLIMIT_DATA = cap (set before torch
    is imported), then ``checks`` fresh processes training 3 steps at that batch."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(LIGHTNING)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def go(mode: str, b: int) -> dict:
        done = subprocess.run([sys.executable, f.name, str(cap_bytes), mode, str(b)], env=env,
                              capture_output=True, text=True, cwd=REPO)  # fmt: skip
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": done.stderr[-400:]}

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    tuned = go("tune", 2)
    tuned["process_wall_s"] = round(time.perf_counter() - t0, 1)
    tuned["load_1min"] = round(load, 2)
    if "answer" in tuned:
        tuned["checks"] = [go("check", tuned["answer"])["status"] for _ in range(checks)]
    Path(f.name).unlink()
    return tuned


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--methods", default=",".join(METHODS), help="bisect,model (default both)")
    p.add_argument("--confirm", type=int, default=3, help="bench oom --confirm R (default 3)")
    p.add_argument("--lightning", action="store_true", help="also Lightning's binsearch")
    p.add_argument("--out", default="results/bench_oom.json")
    p.add_argument("--table", metavar="JSON", help="only print the table of a finished run")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["runs"]))
        return 0
    cases = args.cases.split(",")
    runs: list[dict] = []
    root = Path(tempfile.mkdtemp(prefix="bench-oom-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "runs": runs}
    methods = tuple(m for m in METHODS if m in args.methods.split(","))
    report["lightning"] = []
    for r in range(args.rounds):
        if args.lightning:
            from bench.config import parse_size

            report["lightning"].append(lightning(parse_size("600MiB"), checks=3 if r == 0 else 1))
            print("lightning:", json.dumps(report["lightning"][-1]), flush=True)
        for i, case in enumerate(cases):
            order = methods if (r + i) % 2 == 0 else methods[::-1]
            for method in order:
                folder = root / f"{r}-{case}-{method}"
                runs.append(run_bench_oom(case, method, folder, args.confirm))
                print(json.dumps(runs[-1]), flush=True)
                out.write_text(json.dumps(report, indent=2))
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
