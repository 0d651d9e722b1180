"""What a parent and its child say to each other over the pipe: one frozen dataclass
per message, so a reader matches on the type and names fields instead of unpacking
positional tuples.

Parent -> child: :class:`RunTrial`, :class:`Query`, :class:`Stop`.
Child -> parent: first :class:`Ready` or :class:`StartupError`; then one reply per job:
:class:`TrialDone`, :class:`TrialError`, :class:`Invalid`, :class:`Interrupted` (for a
trial) or :class:`Answer` (for a query). A reply's ``retire`` is None, or why the child
takes no further job (its CPU memory cap could not be put back, say): it exits after
that reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.procs.caps import CapInfo


@dataclass(frozen=True)
class RunTrial:
    """Run one trial: ``config`` is a TrialConfig's ``to_dict()``."""

    job_id: int
    config: dict


@dataclass(frozen=True)
class Query:
    """Call ``function(*args)`` (a module-level function, pickled by name) and answer
    with what it returns."""

    job_id: int
    function: Callable[..., Any]
    args: tuple = ()


@dataclass(frozen=True)
class Stop:
    """Exit now (the child is idle)."""


@dataclass(frozen=True)
class Ready:
    """Set up and waiting for a job; ``cap`` is the memory cap in force, if any."""

    pid: int
    cap: CapInfo | None = None


@dataclass(frozen=True)
class StartupError:
    """Set-up failed (a memory cap below the baseline, CUDA unusable ...); the child exits."""

    pid: int
    error: str  # bench.failures.describe(): "Type: message", one line
    message: str  # str(exception), as a BenchError is shown to the user
    bench_error: bool  # a BenchError: bad input, not a crash
    oom: bool
    traceback: str = ""
    interrupted: bool = False  # a KeyboardInterrupt (SIGINT) stopped the set-up


@dataclass(frozen=True)
class TrialDone:
    """run_trial returned: ``trial`` is its row (whatever its status), ``steps`` its steps."""

    job_id: int
    trial: dict
    steps: Any  # pandas.DataFrame
    stats: dict = field(default_factory=dict)  # child_rss_hwm_bytes, child_max_reserved_bytes ...
    retire: str | None = None


@dataclass(frozen=True)
class TrialError:
    """An exception escaped run_trial."""

    job_id: int
    error: str  # bench.failures.describe()
    oom: bool
    traceback: str = ""
    retire: str | None = None


@dataclass(frozen=True)
class Invalid:
    """The job was refused as bad input (a BenchError): the config, or the query's input."""

    job_id: int
    message: str
    retire: str | None = None


@dataclass(frozen=True)
class Interrupted:
    """The trial was interrupted (a KeyboardInterrupt: SIGINT reached the child). An
    interrupt is not the trial's result: the parent runs the trial again, and this
    child, stopped at an arbitrary point, exits after the reply."""

    job_id: int
    retire: str | None = "it was interrupted"


@dataclass(frozen=True)
class Answer:
    """What a :class:`Query`'s function returned; ``error`` instead when it raised
    something other than a BenchError (bench.failures.describe())."""

    job_id: int
    value: Any = None
    error: str | None = None
    retire: str | None = None


Reply = TrialDone | TrialError | Invalid | Interrupted | Answer
