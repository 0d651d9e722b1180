"""OOM boundaries: the largest micro-batch that fits a memory capacity, and the (b, k)
split that reaches a target batch fastest.

``python -m bench oom --workload W [--capacity SIZE ...] [--target-batch B]``

For each capacity, a *probe* at micro-batch b runs N full optimizer steps (forward,
backward, optimizer step with its state allocated, an evaluation pass, and for token
workloads every sequence at full length) in a fresh process under the capacity's cap
(:mod:`bench.procs`). The search doubles b from a start value until a probe runs out
of memory, then bisects between the last fit and the first OOM to the exact boundary
(or a stated tolerance), in at most 2*log2(b*) + 2 probes from start 1; or
(``--search model``) predicts b* from a line fitted on a few probes and searches from
there. The last fit and the first OOM then run R times (``--confirm``): b* is reported
only when all R agree at both, else the band between. The search stops at
``--max-batch`` and at the training set's size. A probe that fails for any reason but
memory stops the search with that error: it would otherwise be read as a (wrong)
boundary.

Every probe is a row of ``<results>/oom/<name>/probes.parquet``; a probe already there
(same configuration, capacity, machine, software and code; outcome ok/oom) is reused,
so a second run answers without new probes. ``--fresh`` ignores stored probes.

One job per module:

- :mod:`~bench.oom.boundary_search`: the search over a ``fits(b)`` callable and the
  confirmation band (pure);
- :mod:`~bench.oom.model_search`: the memory model's line, prediction and search (pure);
- :mod:`~bench.oom.probe_spec`: the configuration a probe runs and the keys for reuse;
- :mod:`~bench.oom.probe_store`: ``probes.parquet`` under a file lock;
- :mod:`~bench.oom.prober`: runs probes in capped child processes, re-runs a killed one;
- :mod:`~bench.oom.capacity`: one capacity's boundary and safe batch after the margin;
- :mod:`~bench.oom.planner`: the fastest (b, k) for a target batch, timed without the cap;
- :mod:`~bench.oom.run_cap`: ``bench run --memory-cap``, a probe's cap on another process;
- :mod:`~bench.oom.arguments`: the command's flags and their checks;
- :mod:`~bench.oom.command`: ``main``, the command's run; :mod:`~bench.oom.output`: its text.
"""

import importlib

# Loaded on first use (PEP 562): ``bench run``'s parser imports bench.oom.run_cap, and
# the package importing all of these would put pandas (~0.4 s) into every command's start.
_WHERE = {
    "DEFAULT_MARGIN_PCT": "arguments",
    "add_arguments": "arguments",
    "probe_bound": "boundary_search",
    "search": "boundary_search",
    "Boundary": "capacity",
    "CapacityResult": "capacity",
    "find_boundary": "capacity",
    "main": "command",
    "render": "output",
    "divisors": "planner",
    "SearchSpec": "probe_spec",
    "probe_identity": "probe_spec",
    "probe_key": "probe_spec",
    "search_key": "probe_spec",
    "PROBE_COLUMNS": "probe_store",
    "ProbeStore": "probe_store",
    "ProbeFailed": "prober",
    "Prober": "prober",
    "peak_bytes": "prober",
    "probe_row": "prober",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"bench.oom.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bench.oom' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MARGIN_PCT",
    "PROBE_COLUMNS",
    "Boundary",
    "CapacityResult",
    "ProbeFailed",
    "ProbeStore",
    "Prober",
    "SearchSpec",
    "add_arguments",
    "divisors",
    "find_boundary",
    "main",
    "peak_bytes",
    "probe_bound",
    "probe_identity",
    "probe_key",
    "probe_row",
    "render",
    "search",
    "search_key",
]
