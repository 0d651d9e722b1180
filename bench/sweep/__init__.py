"""Sweeps on Optuna: spec files, exactly-once trials, isolated warm workers, resume.

Public API: :func:`load_spec` (validate and expand ``experiments/*.toml``),
:func:`run_sweep` (run, resume or join a sweep), and the CLI module
:mod:`bench.sweep.command`. Imports here stay light; optuna and torch load on use.
"""

from bench.sweep.spec import SweepSpec, load_spec, parse_spec


def run_sweep(*args, **kwargs):
    from bench.sweep.runner import run_sweep as _run

    return _run(*args, **kwargs)


__all__ = ["SweepSpec", "load_spec", "parse_spec", "run_sweep"]
