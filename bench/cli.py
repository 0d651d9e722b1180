"""Command line: argument parsing only; the work is done by the modules it calls.

Bad input ends with one line on stderr (``bench: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.console import text_table
from bench.errors import BenchError, ConfigError, did_you_mean

if TYPE_CHECKING:
    from bench.config import TrialConfig

# Commands that live in their own modules: name -> (module, add_arguments, main, help).
EXTERNAL = {
    "sweep": (
        "bench.sweep.command",
        "add_arguments",
        "main",
        "run a declared sweep (experiments/*.toml)",
    ),
    "oom": (
        "bench.oom",
        "add_arguments",
        "main",
        "find the largest micro-batch that fits a memory capacity",
    ),
    "report": (
        "bench.report.command",
        "add_report_arguments",
        "report_main",
        "figures and tables from results",
    ),
    "compare": (
        "bench.report.command",
        "add_compare_arguments",
        "compare_main",
        "compare two result sets for a pull request",
    ),
    "audit": ("bench.audit_command", "add_arguments", "main", "does (b, k) train like (b·k, 1)?"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        where = self.prog.removeprefix("bench").strip()
        if message.startswith("unrecognized arguments: "):
            # argparse (3.11) suggests nothing; a misspelt flag gets a "did you mean".
            # The top parser reports its subcommand's leftovers: look in that subcommand.
            argv = getattr(self, "argv", None) or []
            parsers, known = [self], []
            while parsers:
                parser = parsers.pop()
                for a in parser._actions:
                    known += [o for o in a.option_strings if o.startswith("--") and o != "--help"]
                    if isinstance(a, argparse._SubParsersAction):
                        parsers += [a.choices[w] for w in argv[:1] if w in a.choices]
            flags = [w.split("=", 1)[0] for w in message.split(": ", 1)[1].split()]
            hints = (did_you_mean(f, known) for f in flags if f.startswith("--"))
            message += next((h for h in hints if h), "")
        raise BenchError(f"{where}: {message}" if where else message)


def add_plan_arguments(p: argparse.ArgumentParser, *, for_run: bool) -> None:
    g = p.add_argument_group("epoch / batch / step")
    g.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="training samples N" + ("" if for_run else " (required)"),
    )
    g.add_argument("--batch-size", type=int, metavar="b", help="micro-batch size b")
    g.add_argument(
        "--accumulation-steps",
        type=int,
        metavar="k",
        help="micro-batches per optimizer step (default 1)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        metavar="E",
        help="epochs (default 1; with --max-steps alone, as many as it takes)",
    )
    g.add_argument("--max-steps", type=int, metavar="S", help="stop after S optimizer steps")
    g.add_argument(
        "--drop-last",
        action="store_true",
        default=None,
        help="drop the last incomplete micro-batch",
    )
    g.add_argument(
        "--partial-window",
        choices=("step", "drop"),
        help="short window at epoch end: step it or drop it",
    )
    g.add_argument(
        "--mode", choices=("sgd", "mbgd", "bgd"), help="sgd: b=1, bgd: b=N, mbgd: the given b"
    )


def _plan_values(args: argparse.Namespace) -> dict:
    keys = (
        "samples",
        "batch_size",
        "accumulation_steps",
        "epochs",
        "max_steps",
        "drop_last",
        "partial_window",
        "mode",
    )
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


# -- plan --------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.plan import make_plan

    values = _plan_values(args)
    if "samples" not in values:
        raise ConfigError("--samples is required")
    if args.world_size is not None:
        from bench.ddp.plan import make_parallel_plan

        parallel = make_parallel_plan(world_size=args.world_size, **values)
        plan, out = parallel.plan, parallel.to_dict()
    else:
        plan = make_plan(**values)
        out = plan.to_dict()
    if (args.at_epoch is None) != (args.at_batch is None):
        raise ConfigError("--at-epoch and --at-batch go together")
    if args.at_epoch is not None:
        out["at_epoch"], out["at_batch"] = args.at_epoch, args.at_batch
        out["global_step"] = plan.global_step(args.at_epoch, args.at_batch)
        if out["global_step"] is None:
            out["no_step_reason"] = plan.no_step_reason(args.at_epoch, args.at_batch)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = [(key.replace("_", " "), _plan_cell(value)) for key, value in out.items()]
    print(text_table(None, rows))
    if args.at_epoch is not None and out["global_step"] is None:
        print(f"(that micro-batch reaches no optimizer step: {out['no_step_reason']})")
    return 0


def _plan_cell(value: Any) -> object:
    if isinstance(value, list):  # one number per rank
        return ", ".join(map(str, value))
    return "-" if value is None else value


# -- run ---------------------------------------------------------------------------------


def parse_option(text: str) -> tuple[str, Any]:
    """``--option KEY=VALUE``: VALUE read as a TOML literal (3, 0.5, true, "text"),
    anything else as a bare string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option expects key=value, got {text!r}")
    from bench.config import NESTED_TOO_DEEP, check_nesting

    where = f"--option {key.strip()}"
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"{where}: {NESTED_TOO_DEEP}") from None
    check_nesting(value, where=where)
    return key.strip(), value


def config_from_args(
    args: argparse.Namespace,
    *,
    defaults: Mapping[str, Any] | None = None,
    required: Iterable[str] = (),
    where: str = "",
) -> TrialConfig:
    """The TrialConfig of a command line, for every command that trains or probes.

    Layers, later ones win: ``defaults`` < ``--config`` TOML < flags whose destination
    is a TrialConfig key (``--batch-size`` -> batch_size) < ``--option KEY=VALUE``
    (workload options, over the file's). A key in ``required`` must come from the file
    or a flag. Errors name ``--config``'s file, else ``where``.
    """
    import dataclasses

    from bench.config import TrialConfig, read_toml

    values: dict[str, Any] = dict(defaults or {})
    config = getattr(args, "config", None)
    if config:
        values.update(read_toml(config))
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrialConfig)
        if getattr(args, f.name, None) is not None
    }
    values.update(flags)
    for key in required:
        if key not in values:
            raise ConfigError(
                f"--{key.replace('_', '-')} is required (or a --config that names one)"
            )
    if getattr(args, "option", None):
        options = values.get("workload_options", {})
        if not isinstance(options, Mapping):
            raise ConfigError("workload_options must be a table of options")
        values["workload_options"] = {**options, **dict(parse_option(o) for o in args.option)}
    return TrialConfig.from_mapping(values, where=str(config) if config else where)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from bench.oom.run_cap import apply_run_cap, peak_line

    cap = apply_run_cap(args, config.device)  # before prepare: a probe's data counts too
    from bench.trial import prepare, run_trial, write_result

    try:
        prepared = prepare(config)  # every input error surfaces here, before OUT is touched
    except Exception as exc:
        from bench.failures import is_oom
        from bench.workloads import data_does_not_fit

        if not is_oom(exc):
            raise
        raise data_does_not_fit(config.workload, exc) from None
    if not str(args.out).strip():
        raise ConfigError("--out must name a folder")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    created = not out.exists()
    try:  # before training: an unusable --out is bad input, not a traceback after the run
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {out}: {exc.strerror or exc}") from None
    try:
        result = run_trial(config, results_dir=out, prepared=prepared)
    except BenchError:
        if created:  # bad input found late (a meter setting): leave nothing behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if config.nproc is not None:
        from bench.ddp.launch import writes_results

        if not writes_results():  # under torchrun: rank 0 writes and prints the trial
            return 0 if result.trial["status"] == "ok" else 1
    write_result(result, out, per_key=False)
    t = result.trial
    rate = f"{t['samples_per_s']:.0f} samples/s" if t.get("samples_per_s") else "- samples/s"
    loss, tail = (
        f"{t[c]:.4f}" if t.get(c) is not None else "-" for c in ("final_loss", "tail_loss")
    )
    ranks = f" ranks={t['world_size']} sync={t['sync']}" if t.get("world_size") else ""
    line = (
        f"{t['status']}: {t['workload']} {t['mode']} b={t['micro_batch_size']} k={t['accumulation_steps']}{ranks} "
        f"steps={t['optimizer_steps']}/{t['planned_steps']} final_loss={loss} tail_loss={tail} {rate} -> {out}"
    )
    if t.get("error"):
        line += f" ({t['error']})"
    print(line)
    if peak_line(cap):
        print(peak_line(cap), file=sys.stderr)
    return 0 if t["status"] == "ok" else 1


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file of TrialConfig keys (flags override it)")
    p.add_argument("--workload", help="seed-mlp, teacher-mlp, char-lm, resnet, or module:function")
    p.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help="workload option (repeatable)"
    )
    add_plan_arguments(p, for_run=True)
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adamw"))
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--scheduler", choices=("constant", "linear-warmup", "cosine", "step"))
    g.add_argument("--scheduler-interval", choices=("step", "epoch"))
    g.add_argument("--warmup", type=int, help="scheduler intervals of linear warm-up")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--step-size", type=int, help="step scheduler: intervals between decays")
    g.add_argument("--gamma", type=float, help="step scheduler: decay factor (default 0.1)")
    g.add_argument("--grad-clip", type=float)
    g.add_argument(
        "--grad-norm-every", type=int, metavar="STEPS", help="record the gradient norm (default 16)"
    )
    g.add_argument(
        "--normalize", choices=("sample", "micro"), help="loss normalisation across a window"
    )
    g.add_argument(
        "--noise-scale-every",
        type=int,
        metavar="STEPS",
        help="measure the gradient noise scale B_simple every N steps (default 256; 0: never)",
    )
    g = p.add_argument_group("evaluation and early stopping")
    g.add_argument("--eval-every", type=int, metavar="STEPS", help="default: every epoch")
    g.add_argument("--patience", type=int)
    g.add_argument("--min-delta", type=float)
    g.add_argument("--restore-best", action="store_true", default=None)
    g.add_argument(
        "--restore-rule",
        dest="restore",
        choices=("best", "last_improvement"),
        help="which weights --restore-best reloads: the lowest val loss (default) or the "
        "last improvement larger than --min-delta (Keras)",
    )
    g = p.add_argument_group("execution")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16", "fp64"))
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument(
        "--data-path",
        choices=("tensor", "dataloader"),
        help="fast device tensors or the tutorial's DataLoader",
    )
    g.add_argument("--flush-every", type=int, help="steps between host syncs (default 64)")
    g.add_argument(
        "--timing-warmup-steps", type=int, help="steps excluded from throughput (default 3)"
    )
    g.add_argument("--time-limit-s", type=float)
    g.add_argument(
        "--peak-tflops", type=float, help="the device's peak for MFU (overrides the table)"
    )
    g = p.add_argument_group("data parallel (docs/commands/ddp.md)")
    g.add_argument(
        "--nproc", type=int, metavar="N", help="train on N DDP ranks, each taking b samples"
    )
    g.add_argument(
        "--sync",
        choices=("window", "every"),
        help="all-reduce once per window (no_sync, default) or every micro-batch",
    )
    p.add_argument("--out", required=True, help="folder for trial.parquet and steps.parquet")
    from bench.oom.run_cap import add_run_cap_arguments

    add_run_cap_arguments(p)


# -- schema ------------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    if args.what == "spec":
        from bench.sweep.spec_schema import spec_schema as schema
    else:
        from bench.config import config_schema as schema
    print(json.dumps(schema(), indent=2))
    return 0


# -- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("plan", help="epoch / micro-batch / step arithmetic for a configuration")
    add_plan_arguments(p, for_run=False)
    p.add_argument("--at-epoch", type=int, metavar="E", help="with --at-batch: which global step")
    p.add_argument(
        "--at-batch", type=int, metavar="I", help="micro-batch index within the epoch (1-based)"
    )
    p.add_argument(
        "--world-size", type=int, metavar="N", help="N data-parallel ranks, each taking b samples"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("run", help="train one configuration and store its results")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("schema", help="JSON Schema of a sweep spec or a TrialConfig file")
    p.add_argument(
        "what",
        choices=("spec", "config"),
        help="spec: experiments/*.toml; config: bench run --config",
    )
    p.set_defaults(func=cmd_schema)
    for name, (module, add, main, help_text) in EXTERNAL.items():
        p = sub.add_parser(name, help=help_text)
        try:
            mod = importlib.import_module(module)
        except ImportError:
            p.set_defaults(func=lambda args, n=name: _missing(n))
            continue
        getattr(mod, add)(p)
        # Looked up when the command runs: bench.oom's main imports pandas (~0.4 s).
        p.set_defaults(func=lambda args, mod=mod, main=main: getattr(mod, main)(args))
    return parser


def _missing(name: str) -> int:
    raise BenchError(f"the {name} command is not available in this build")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        parser.argv = list(sys.argv[1:] if argv is None else argv)  # for "did you mean"
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`bench ... | head`): stop quietly, as tools killed by
        # SIGPIPE do; stdout goes to /dev/null so the interpreter's final flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
