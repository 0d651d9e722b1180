"""``bench audit SPEC...``: run a spec's (b, k) and (b·k, 1) trials in this process and
write how far apart they end, next to how far two seeds end (``bench.audit``).

Writes, in ``--out`` (default ``results/<spec name>-audit``):

- ``audit.parquet``: one row per compared pair (``bench.audit.AuditRow``);
- ``audit_steps.parquet``: each pair's |Δ loss| step by step;
- ``audit.md``: the summary table; ``audit.png`` / ``audit.svg``: the figure.

and prints the summary table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="+", help="sweep spec(s) with (b, k) and (b·k, 1) cases")
    p.add_argument("--out", metavar="DIR", help="output folder (default results/<name>-audit)")


def load_configs(paths: list[str]) -> tuple[list, list[str]]:
    """The trials of the spec files, and their header comments (what each asks)."""
    from bench.sweep.spec import load_spec

    configs, questions = [], []
    for path in paths:
        spec = load_spec(path)
        if spec.search is not None:
            raise ConfigError(f"{path}: the audit runs a grid; this spec is a search")
        configs += [p.config for p in spec.points]
        questions.append(spec.question)
    return configs, questions


def main(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from bench import audit, store
    from bench.report.figures import render
    from bench.report.figures.plot_audit import audit_figure

    configs, questions = load_configs(args.spec)
    found, missing = audit.pairs(configs)
    if not found:
        raise ConfigError(
            "the specs hold no (b, k > 1) with a (b·k, 1) at the same seed, nor two seeds of "
            "a (B, 1)" + (f"; {missing[0]}" if missing else "")
        )
    for line in missing:
        print(f"bench audit: not compared: {line}", file=sys.stderr)
    out = Path(args.out or Path("results") / f"{Path(args.spec[0]).stem}-audit")

    def progress(i: int, n: int, config) -> None:
        print(
            f"[{i}/{n}] {config.workload} {dict(config.workload_options)} "
            f"b={config.batch_size} k={config.accumulation_steps} seed={config.seed}",
            file=sys.stderr,
        )

    rows, steps = audit.audit(configs, progress)
    out.mkdir(parents=True, exist_ok=True)
    store.write_atomic(pa.Table.from_pandas(rows, preserve_index=False), out / "audit.parquet")
    store.write_atomic(
        pa.Table.from_pandas(steps, preserve_index=False), out / "audit_steps.parquet"
    )
    table = audit.summary_markdown(audit.summary(rows))
    header = "".join(f"<!-- {q.strip()} -->\n" for q in questions)
    store.write_bytes_atomic((header + "\n" + table).encode(), out / "audit.md")
    figure = audit_figure(rows, steps)
    png, svg = render(figure)
    store.write_bytes_atomic(png, out / "audit.png")
    store.write_bytes_atomic(svg, out / "audit.svg")
    print(table, end="")
    print(f"-> {out}", file=sys.stderr)
    return 0
