"""A stack in a sweep's worker: the function a worker runs for a
:class:`~bench.procs.messages.Query` whose trials train as one stack.

The worker's loop (:mod:`bench.procs.child`) is unchanged: a query calls a module-level
function and answers with what it returns, here one ``(trial row, steps, stats)`` per
member, in the order of the configs sent.
"""

from __future__ import annotations

from typing import Any


def run_stack_job(configs: list[dict], sweep: str | None, results_dir: str | None) -> list:
    from bench.config import TrialConfig
    from bench.procs.caps import resolve_device_name
    from bench.procs.child import child_stats
    from bench.stack.trial import run_stack

    members = [TrialConfig.from_mapping(c) for c in configs]
    results = run_stack(members, sweep=sweep, results_dir=results_dir)
    stats = child_stats(resolve_device_name(members[0].device))
    return [(r.trial, r.steps, stats) for r in results]


def member_rows(value: Any, count: int) -> list[tuple[dict, Any]] | None:
    """A worker's answer as (row, steps) per member, or None when it is not one."""
    if not isinstance(value, list) or len(value) != count:
        return None
    return [(row, steps) for row, steps, _stats in value]
