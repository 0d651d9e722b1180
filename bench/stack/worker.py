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


def probe_stack_job(config: dict, size: int) -> Any:
    """An OOM probe of a stack's size (bench oom --stack): ``size`` members of ``config``
    (seeds config.seed, +1, ...) trained as one stack, not split when it runs out of
    memory. Answers as a trial job would: a TrialDone with the first member's row (its
    status and memory columns are the stack's) or a TrialError."""
    import traceback

    from bench.config import TrialConfig
    from bench.errors import BenchError
    from bench.failures import describe, is_oom
    from bench.procs import messages as msg
    from bench.procs.caps import resolve_device_name
    from bench.procs.child import child_stats
    from bench.stack.trial import run_stack

    first = TrialConfig.from_mapping(config)
    members = [first.replace(seed=first.seed + i) for i in range(size)]
    try:
        result = run_stack(members, split=False)[0]
    except BenchError:
        raise  # bad input: the caller's error (answered as Invalid)
    except Exception as exc:  # noqa: BLE001 - out of memory building the data, say
        return msg.TrialError(0, describe(exc), is_oom(exc), traceback.format_exc())
    stats = child_stats(resolve_device_name(first.device))
    return msg.TrialDone(0, result.trial, result.steps, stats)


def member_rows(value: Any, count: int) -> list[tuple[dict, Any]] | None:
    """A worker's answer as (row, steps) per member, or None when it is not one."""
    if not isinstance(value, list) or len(value) != count:
        return None
    return [(row, steps) for row, steps, _stats in value]
