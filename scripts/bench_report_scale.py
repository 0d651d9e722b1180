"""Scale benchmark: `bench report` on 1,000 trials x 10,000 steps (10 M step rows).

Target (issue 6): under 60 s wall time and under 4 GiB peak RSS on the 2-core dev box.

The results are generated once (synthetic, through the results contract; ~2 min) into
``--data`` (default: a folder under the system temp dir, reused between runs). Each
repeat runs the full command line, ``python -m bench report DATA --out OUT``, as a fresh
child process; wall time and peak RSS come from the child's own rusage (os.wait4), so
they include interpreter start, imports, reading every parquet file and writing every
figure. Repeats alternate with a ``--no-figures`` variant (analysis and documents only)
so that drift on the machine hits both alike. Prints medians and min–max per variant.

    python scripts/bench_report_scale.py [--repeats 3] [--trials 1000] [--steps 10000]
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

GIB = 2**30
TARGET_S = 60.0
TARGET_RSS = 4 * GIB


def generate(folder: Path, trials: int, steps: int) -> None:
    from bench.report.synthetic import Synthetic, write_synthetic

    shapes = (
        (1, 1),
        (2, 1),
        (4, 1),
        (8, 1),
        (16, 1),
        (32, 1),
        (64, 1),
        (16, 4),
        (128, 1),
        (256, 1),
    )
    lrs = (0.003, 0.01, 0.03, 0.1)
    seeds_needed = max(1, trials // (len(shapes) * len(lrs)))
    spec = Synthetic(
        shapes=shapes,
        lrs=lrs,
        seeds=tuple(range(seeds_needed)),
        fixed_steps=steps,
        s_min=40.0,
        b_crit=64.0,
        samples=50_000,
        sweep="scale",
        oom_above=None,
    )
    write_synthetic(folder, spec)
    (folder / ".complete").write_text(json.dumps({"trials": trials, "steps": steps}))


def child(data: Path, out: Path, figures: bool) -> None:
    from bench.report.build import build_report, write_report

    rep = build_report(data, figures=figures)
    write_report(rep, out)
    print(
        json.dumps(
            {
                "timings_s": rep.timings_s,
                "configurations": len(rep.summary),
                "trials": len(rep.prep.trials),
                "step_rows": len(rep.prep.steps),
                "b_crit": {str(k): v.b_crit for k, v in rep.fits.items()},
            }
        )
    )


def run_once(data: Path, out: Path, figures: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(data), str(out)] + (
        [] if figures else ["--no-figures"]
    )
    if figures:  # the real command line, as a user runs it
        cmd = [sys.executable, "-m", "bench", "report", str(data), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"report failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout": stdout.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench-report-scale")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-figures", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, figures=not args.no_figures)
        return 0

    data = args.data / f"t{args.trials}-s{args.steps}"
    if not (data / ".complete").exists():
        print(f"generating {args.trials} trials x {args.steps} steps into {data} ...", flush=True)
        t0 = time.perf_counter()
        generate(data, args.trials, args.steps)
        print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)
    size = sum(p.stat().st_size for p in data.rglob("*.parquet"))
    print(f"data: {data} ({size / 2**20:.0f} MiB of parquet)")

    results: dict[str, list[dict]] = {"report": [], "report --no-figures": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, figures in (("report", True), ("report --no-figures", False)):
                r = run_once(data, Path(tmp) / f"out{i}-{figures}", figures)
                results[name].append(r)
                print(
                    f"  {name:<20} repeat {i + 1}: {r['wall_s']:.1f} s, "
                    f"peak RSS {r['peak_rss_bytes'] / GIB:.2f} GiB",
                    flush=True,
                )
    ok = True
    print(f"\n{'variant':<22}{'wall s median (min–max)':<28}{'peak RSS GiB median (min–max)'}")
    for name, rs in results.items():
        w = [r["wall_s"] for r in rs]
        m = [r["peak_rss_bytes"] / GIB for r in rs]
        print(
            f"{name:<22}{statistics.median(w):6.1f} ({min(w):.1f}–{max(w):.1f}){'':<12}"
            f"{statistics.median(m):5.2f} ({min(m):.2f}–{max(m):.2f})"
        )
        if name == "report":
            ok = statistics.median(w) < TARGET_S and max(m) * GIB < TARGET_RSS
    detail = next(
        (r["stdout"] for r in results["report --no-figures"] if r["stdout"].startswith("{")), ""
    )
    if detail:
        print(f"phases (no-figures child, s): {json.loads(detail)['timings_s']}")
    print(
        f"\ntarget: < {TARGET_S:.0f} s and < {TARGET_RSS / GIB:.0f} GiB -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
