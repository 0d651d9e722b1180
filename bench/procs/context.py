"""The forkserver every bench child process is forked from.

Why a forkserver: an OOM leaves a process's allocator fragmented and its caches full,
so the next trial in the same process would see less memory than a clean run does (the
complaint users have about in-process batch-size finders). Children forked from a
server that has imported torch and bench but never run anything all start from the
same clean state, pay ~0.1 s to start instead of the ~1.5 s a spawned interpreter needs
to import torch, and inherit none of the parent's descriptors (locks, DB connections).

The server is global to the process: the first start fixes its preload list, so there
is one list, here.
"""

from __future__ import annotations

import multiprocessing
import threading

# Modules the forkserver imports once, so children start with them loaded.
PRELOAD = (
    "bench.forkserver_init",  # first: no Ctrl-C traceback from the imports below
    "torch",
    "pandas",
    "pyarrow.parquet",
    # What every trial imports on its first run, solo or stacked: the FLOP counter
    # (torch.utils.flop_counter) runs the model's forward under module hooks wrapped in
    # torch._disable_dynamo, which imports torch._dynamo (and it sympy); torch.optim's
    # step imports it too. Preloaded, the server takes ~1.0 s longer once; not, each
    # child's warm-up takes ~1.0 s instead of 0.04 s (2-core EPYC, load 2.5,
    # docs/benchmarks.md "Stacked sweeps"), every worker pays it and holds its own copy,
    # and under a cap that memory would be charged to the probe and could fail an
    # import half-way.
    "torch._dynamo",
    "sympy",
    "torch.utils.flop_counter",
    "bench.config",
    "bench.failures",
    "bench.trial",
    "bench.meters",
    "bench.meters.env",
    "bench.meters.flops",
    "bench.meters.nvml",
    "bench.workloads.seed_mlp",
    "bench.workloads.teacher_mlp",
    "bench.workloads.char_lm",
    "bench.procs.child",
    # Stacked sweeps (bench.stack): torch.func's vmap and the stacked trainer.
    "torch.func",
    "bench.stack.trial",
    "bench.stack.worker",
)

_CTX: multiprocessing.context.BaseContext | None = None
_CTX_LOCK = threading.Lock()


def forkserver_context() -> multiprocessing.context.BaseContext:
    """The forkserver context (spawn where fork is unavailable), created once."""
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(list(PRELOAD))
            else:  # pragma: no cover - not Linux
                ctx = multiprocessing.get_context("spawn")
            _CTX = ctx
        return _CTX


def start_forkserver() -> None:
    """Start the forkserver now, without waiting for it: its preload imports (torch and
    the rest, ~1.5 s of CPU) then overlap the caller's own work (a sweep opening its
    study and claiming tickets) instead of delaying the first worker. OpenMP's wait
    policy is set first, as :class:`bench.sweep.pool.WorkerPool` sets it: libgomp reads
    it when torch loads, i.e. in the server."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    context = forkserver_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
