"""Start a data-parallel trial's ranks and make one trial of what they report.

Each rank is a bench child (:class:`bench.procs.ChildProcess`, the one child loop) with
torchrun's environment variables set, running the trial as one job; rank 0's row is the
trial's. When a rank fails (dies, runs out of memory, raises) the others get a grace
period to report (a peer's death usually ends their collective at once; the process
group's timeout bounds it otherwise), then are killed: no rank outlives the trial. The
trial's status and error are those of the rank that failed first in cause, named.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.procs import ChildProcess, ChildSetup
from bench.procs import messages as msg

# After the first rank fails, how long the others may take to report before they are
# killed: enough to write a row, short of a collective's timeout.
GRACE_S = 10.0
# An error text that says "a peer went away" rather than what went wrong.
PEER_ERRORS = ("gloo", "nccl", "connection", "timed out", "timeout", "dist", "peer")


def in_rank() -> bool:
    from bench.ddp.rank import in_rank as check

    return check()


def writes_results() -> bool:
    """Outside a rank, or rank 0 of one: the process that writes a trial's results."""
    return not in_rank() or os.environ.get("RANK") == "0"


def join_rank(config, samples: int):
    """This process as a rank of ``config``'s trial (a :class:`bench.ddp.rank.RankHooks`)."""
    from bench.ddp import rank

    hooks = rank.join(config, samples)
    atexit.register(rank.leave)
    return hooks


def spec_starts_ranks(spec) -> bool:
    """True when a sweep spec (bench.sweep.spec.SweepSpec) may hold data-parallel trials:
    its workers then start rank processes of their own."""
    layers = [spec.base, *spec.cases, spec.axes]
    ranges = spec.search.ranges if spec.search else ()
    return (
        any("nproc" in layer for layer in layers)
        or any(r.name == "nproc" for r in ranges)
        or any(p.config.nproc for p in spec.points)
    )


def free_port() -> int:
    """A TCP port free on the loopback now, for rank 0's rendezvous store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Rank:
    child: ChildProcess
    log_path: str
    reply: Any = None
    killed_by_us: bool = False
    done: bool = False


@dataclass
class _Watch:
    ranks: list[_Rank]
    failed_at: float | None = None  # time.monotonic() of the first rank's failure


def _rank_setup(config, rank: int, port: int, threads: int, sweep, results_dir) -> ChildSetup:
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(config.nproc),
        "LOCAL_WORLD_SIZE": str(config.nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    fd, log_path = tempfile.mkstemp(prefix=f"bench-rank{rank}-", suffix=".log")
    os.close(fd)
    return ChildSetup(
        log_path=log_path,
        env=env,
        threads=threads,
        device=config.device,
        max_jobs=1,
        sweep=sweep,
        results_dir=None if results_dir is None or rank else str(results_dir),
        watch_pid=os.getpid(),
    )


def rank_threads(nproc: int) -> int:
    """Torch threads per rank: this process's share of its own, at least 1 (ranks that
    together ask for more threads than cores slow each other down)."""
    import torch

    return max(1, torch.get_num_threads() // nproc)


def run_ranks(
    config,
    *,
    sweep: str | None = None,
    results_dir: str | Path | None = None,
    on_started: Callable[[list[int]], None] | None = None,
    grace_s: float = GRACE_S,
):
    """Train ``config`` on ``config.nproc`` ranks; returns the trial's TrialResult.
    ``on_started(pids)`` is called once every rank has its job (tests kill one there)."""
    from bench.ddp.plan import parallel_plan
    from bench.trial import prepare

    workload, _, _ = prepare(config)  # bad input is found here, before any rank starts
    parallel_plan(config, workload.n_train)
    del workload
    port, threads = free_port(), rank_threads(config.nproc)
    ranks = []
    try:
        for r in range(config.nproc):
            setup = _rank_setup(config, r, port, threads, sweep, results_dir)
            ranks.append(_Rank(ChildProcess(setup, name=f"bench-rank{r}"), setup.log_path))
        for rank in ranks:
            rank.child.start()
        watch = _Watch(ranks)
        _watch(watch, config, on_started, grace_s)
    finally:
        for rank in ranks:
            if rank.child.is_alive():
                rank.killed_by_us = rank.reply is None
            rank.child.kill()  # SIGKILL and reap: no rank survives the trial
            rank.child.close()
    try:
        return _combine(config, ranks, sweep)
    finally:
        for rank in ranks:
            Path(rank.log_path).unlink(missing_ok=True)


def _watch(watch: _Watch, config, on_started, grace_s: float) -> None:
    """Hand each rank its job when it is Ready; collect replies and deaths until every
    rank is done, or the grace after a failure is over."""
    job = config.to_dict()
    ready = 0
    while not all(rank.done for rank in watch.ranks):
        live = [rank for rank in watch.ranks if not rank.done]
        wait([obj for rank in live for obj in (rank.child.conn, rank.child.sentinel)], 0.2)
        for index, rank in enumerate(watch.ranks):
            if rank.done:
                continue
            message = _receive(rank)
            if isinstance(message, msg.Ready):
                rank.child.send(msg.RunTrial(index, job))
                ready += 1
                if ready == len(watch.ranks) and on_started is not None:
                    on_started([r.child.pid for r in watch.ranks])
                continue
            if message is None and not rank.child.is_alive():
                # Gone: a reply it sent just before exiting may have landed since the poll.
                message, rank.done = _receive(rank), True
            if message is not None:
                rank.reply, rank.done = message, True
            if rank.done and not _ok(rank) and watch.failed_at is None:
                watch.failed_at = time.monotonic()
        if watch.failed_at is not None and time.monotonic() - watch.failed_at > grace_s:
            return


def _receive(rank: _Rank) -> Any:
    try:
        if rank.child.conn.poll(0):
            return rank.child.conn.recv()
    except (EOFError, OSError):
        pass
    return None


def _ok(rank: _Rank) -> bool:
    reply = rank.reply
    return isinstance(reply, msg.TrialDone) and reply.trial.get("status") == "ok"


def _cause(rank: _Rank) -> tuple[int, str, str] | None:
    """(priority, status, error) of a rank that did not finish ok; lower priority is the
    likelier first cause: a death, an OOM, an error of its own, then a peer's absence."""
    from bench.failures import interrupted_exit, status_for_exit

    reply, child = rank.reply, rank.child
    if isinstance(reply, msg.Ready):  # died before its job could start: no reply
        reply = None
    if _ok(rank):
        return None
    if isinstance(reply, msg.Invalid):
        raise BenchError(reply.message)
    if isinstance(reply, msg.Interrupted) or (
        reply is None and not rank.killed_by_us and interrupted_exit(child.exitcode)
    ):
        raise KeyboardInterrupt
    if reply is None:
        if rank.killed_by_us:
            return 5, "failed", "killed after another rank failed"
        error = f"{child.exit_text()} before reporting"
        tail = _log_tail(rank.log_path)
        if tail:
            error += f"; output: {tail[-300:]}"
        return 0, status_for_exit(child.exitcode), error
    if isinstance(reply, msg.TrialDone):
        status, error = reply.trial.get("status"), reply.trial.get("error") or ""
    elif isinstance(reply, msg.StartupError) and reply.bench_error:
        raise BenchError(reply.message)
    else:  # TrialError, StartupError
        status, error = ("oom" if reply.oom else "failed"), reply.error
    if status == "oom":
        return 1, status, error
    peer = any(word in error.lower() for word in PEER_ERRORS)
    return (4 if peer else 2 if status == "failed" else 3), status, error


def _combine(config, ranks: list[_Rank], sweep: str | None):
    from bench.procs import unreported_trial_result
    from bench.trial import TrialResult

    causes = [(c, r) for r, c in ((r, _cause(rank)) for r, rank in enumerate(ranks)) if c]
    first = ranks[0].reply
    if isinstance(first, msg.TrialDone):
        result = TrialResult(trial=dict(first.trial), steps=first.steps)
    else:
        result = None
    if not causes:
        return result
    (_, status, error), r = min(causes)
    error = f"rank {r}: {error}"
    if result is None:
        return unreported_trial_result(config, status=status, error=error, sweep=sweep)
    result.trial.update(status=status, error=error)
    return result


def _log_tail(path: str, limit: int = 800) -> str:
    with contextlib.suppress(OSError):
        data = Path(path).read_bytes()[-limit:]
        return " ".join(data.decode("utf-8", "replace").split())
    return ""
