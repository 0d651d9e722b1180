#!/usr/bin/env python3
"""Instructions per optimizer step: bench's loop against the bare loops, without noise.

Timing ratios on a shared 2-core machine move by a few per cent from run to run, which
hides single-microsecond costs. Instruction counts do not move: each loop runs under
valgrind's callgrind, counting only inside one ctypes call (``--toggle-collect=ffi_call``:
the loop is run from a ``qsort`` comparator), at two lengths; the difference divided by
the difference in steps is the per-step count, with set-up and teardown cancelled.

The loops are those of ``scripts/bench_overhead.py`` (its ``bare_loop``, per-step clock
read included, as bench has one): ``tutorial`` (``loss.backward()``), ``lean`` (the
autograd engine's private entry point called directly, a floor) and ``bench``
(``bench.train.train``: the public ``Tensor.backward`` as in the tutorial, flushes
included, no evaluation, default gradient-norm sampling).
Instructions are not time (cache misses and stalls are not counted), but on these
dispatch-bound CPU steps they track it: seed-mlp runs ~8.6 instructions per ns here.

    python scripts/step_instructions.py                      # seed-mlp, 64 vs 192 steps
    python scripts/step_instructions.py --workload teacher-mlp
    python scripts/step_instructions.py --keep out/          # keep callgrind files to
        # inspect with callgrind_annotate --inclusive=yes out/bench-192.out

Needs valgrind (not installed by CI; a development tool). ~1 minute per run, 2 at once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("tutorial", "lean", "bench")


def child(mode: str, workload_name: str, steps: int, batch_size: int) -> None:
    """Run one loop of ``steps`` steps inside a qsort comparator (the counted region)."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    import torch
    from bench_overhead import bare_loop  # the same bare loops as the timing benchmark

    from bench.config import TrialConfig
    from bench.train import train
    from bench.workloads import build_workload

    torch.set_num_threads(1)
    samples = steps * batch_size
    config = TrialConfig.from_mapping(
        {
            "workload": workload_name,
            "samples": samples,
            "batch_size": batch_size,
            "epochs": 1,
            "lr": 0.01,
            "eval_every": 0,
        }
    )
    workload = build_workload(workload_name, samples=samples)
    plan = config.plan(workload.n_train)
    cpu = torch.device("cpu")

    def loop() -> None:
        if mode == "bench":
            train(config, workload, plan, cpu)
        else:
            bare_loop(config, cpu, lean=mode == "lean", workload=workload)  # data built once

    loop()  # warm: lazy initialisation stays out of the count
    loop()
    ran = []

    def compare(a, b) -> int:
        if not ran:
            ran.append(True)
            loop()
        return 0

    comparator = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(compare)
    items = (ctypes.c_int * 2)(1, 2)
    ctypes.CDLL(None).qsort(items, 2, ctypes.sizeof(ctypes.c_int), comparator)
    if not ran:
        raise SystemExit("step_instructions: qsort never called the comparator")


def count(mode: str, workload: str, steps: int, batch_size: int, out_dir: Path) -> int:
    out = out_dir / f"{mode}-{steps}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=ffi_call",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        mode,
        "--workload",
        workload,
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step_instructions: {mode} {steps} failed: {done.stderr[-2000:]}")
    for line in out.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"step_instructions: no totals in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="seed-mlp", choices=["seed-mlp", "teacher-mlp"])
    parser.add_argument("--steps", type=int, default=64, help="short run; the long one is 3x")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this folder")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workload, args.steps, args.batch_size)
        return 0
    if shutil.which("valgrind") is None:
        print("step_instructions: valgrind is not installed", file=sys.stderr)
        return 2
    out_dir = args.keep or Path(tempfile.mkdtemp(prefix="step-instructions-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    short, long = args.steps, 3 * args.steps
    jobs = [(mode, n) for mode in MODES for n in (short, long)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        totals = dict(
            zip(
                jobs,
                pool.map(
                    lambda job: count(job[0], args.workload, job[1], args.batch_size, out_dir),
                    jobs,
                ),
                strict=True,
            )
        )
    per_step = {m: (totals[m, long] - totals[m, short]) / (long - short) for m in MODES}
    print(f"{args.workload}, batch {args.batch_size}: instructions per optimizer step")
    for mode in MODES:
        print(f"  {mode:<8} {per_step[mode]:>12,.0f}")
    for base in ("tutorial", "lean"):
        extra = per_step["bench"] - per_step[base]
        print(
            f"  bench - {base}: {extra:+,.0f} ({extra / per_step[base]:+.1%}); "
            f"instruction ratio {base}/bench {per_step[base] / per_step['bench']:.3f}"
        )
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
