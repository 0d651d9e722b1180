"""``bench run --memory-cap SIZE``: train under the cap a ``bench oom`` probe runs under,
so a boundary can be checked in a fresh process that is not bench's probe child.

The capacity means the same in both: the reference baseline (an idle probe process with
torch and bench loaded, the number ``bench oom`` prints) plus a training budget. On the
CPU this process gets that budget above its own baseline, measured the way a probe's is:
the modules a probe process has preloaded are imported first, malloc is fixed, torch's
thread pool is started, and only then is VmData read and ``RLIMIT_DATA`` set. A fresh
``python -m bench run`` holds about 11 MiB more VmData when idle than a probe child (its
own imports and argument parsing; measured 351.6 against 340.5-345.5 MiB), so a cap on
the total would make a boundary hold only in bench's own child. On CUDA the cap is the
allocator fraction minus this process's own context, as for a probe.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def add_run_cap_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory cap (as a bench oom probe)")
    g.add_argument(
        "--memory-cap",
        metavar="SIZE",
        help="train under the cap bench oom --capacity SIZE puts on a probe, e.g. 600MiB",
    )
    g.add_argument(
        "--memory-baseline",
        metavar="SIZE",
        help="the reference baseline bench oom printed (CPU; default: measured again, "
        "in a probe-like child)",
    )


def apply_run_cap(args: argparse.Namespace, device: str):
    """Cap this process as a probe is capped (a CapInfo), or None without --memory-cap.
    Call it before the trial prepares its data: a probe's data counts against the cap."""
    from bench.config import format_bytes, parse_size
    from bench.errors import ConfigError

    if getattr(args, "memory_cap", None) is None:
        if getattr(args, "memory_baseline", None) is not None:
            raise ConfigError("--memory-baseline needs --memory-cap")
        return None
    cap = parse_size(args.memory_cap, key="--memory-cap")
    from bench.procs.caps import apply_memory_cap, resolve_device_name

    device = resolve_device_name(device)
    reference = None
    if not device.startswith("cuda"):
        if args.memory_baseline is not None:
            reference = parse_size(args.memory_baseline, key="--memory-baseline")
        else:
            from bench.procs import measure_baseline

            reference = int(measure_baseline(device)["baseline_bytes"])
        if cap <= reference:  # before the imports: bad input is told at once
            raise ConfigError(
                f"--memory-cap {args.memory_cap} is at or below the reference baseline "
                f"{format_bytes(reference)}: no training budget is left"
            )
        _preload()
    info = apply_memory_cap(cap, device, reference_baseline=reference)
    print(f"bench run: {info.describe()}", file=sys.stderr)
    return info


def _preload() -> None:
    """Import what a probe process has loaded before its cap (bench.procs.context), so
    their memory is baseline here too, not training budget."""
    from bench.procs.context import PRELOAD

    for name in PRELOAD:
        if name != "bench.forkserver_init":  # a forkserver's own Ctrl-C handling
            importlib.import_module(name)


def peak_line(info) -> str | None:
    """One line for the end of a capped run: the peak of what the cap counts."""
    from bench.config import format_bytes
    from bench.procs.caps import vmdata_peak

    peak = vmdata_peak() if info is not None and info.method == "rlimit-data" else None
    if peak is None:
        return None
    return (
        f"bench run: VmData peak {format_bytes(peak)} of a {format_bytes(info.limit_bytes)} cap "
        f"(baseline {format_bytes(info.baseline_bytes)})"
    )


def config_toml(config: dict) -> str:
    """A TrialConfig's dict (a probe's ``config_json``) as a ``bench run --config`` TOML
    file: the probe's exact configuration, to run outside bench's probe child. Keys
    whose value is None are left out (their defaults are None, and ``max_steps``
    without ``epochs`` means no epoch limit)."""
    import json

    def value(v) -> str:
        return str(v).lower() if isinstance(v, bool) else json.dumps(v)

    lines = [
        f"{k} = {value(v)}" for k, v in config.items() if v is not None and k != "workload_options"
    ]
    options = config.get("workload_options") or {}
    if options:
        lines += ["", "[workload_options]", *(f"{k} = {value(v)}" for k, v in options.items())]
    return "\n".join(lines) + "\n"
