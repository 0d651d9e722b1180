"""How work ends badly: a trial (out of memory, diverged, failed), a child process that
died without reporting, an interrupt, a full disk.

Shared by the trial runner, the process layer (:mod:`bench.procs`: sweep workers and
oom probes) and the OOM search, so that all three call the same thing an OOM. Order:
exception type first, then the message forms the backends and libraries use, then (for a
dead worker) death by SIGKILL, which is what the Linux OOM killer and most cgroup limits
send. Anything else is a failure. Two endings are not a trial's result at all: an
interrupt (SIGINT, SIGTERM), which gives the trial back to be run again, and a full disk,
which stops the sweep until there is room (:class:`DiskFull`).
"""

from __future__ import annotations

import errno
import os
import re
import signal
from pathlib import Path

from bench.errors import BenchError

# Message forms, lower-cased, matched as substrings. Each names where it comes from.
OOM_MESSAGES = (
    "cuda out of memory",  # torch CUDA caching allocator (older releases, no type)
    "out of memory",  # generic: CUDA driver, XPU ("XPU out of memory"), HIP ("HIP out of memory")
    "cuda error: out of memory",  # CUDA runtime via c10
    "hip error: out of memory",  # ROCm runtime
    "mps backend out of memory",  # Apple MPS
    "cublas_status_alloc_failed",  # cuBLAS workspace allocation
    "cudnn_status_alloc_failed",  # cuDNN (legacy API)
    "cudnn_status_not_supported. this error may appear if you passed in a non-contiguous input",
    "cudnn_backend_api_failed",
    "defaultcpuallocator: not enough memory",  # torch CPU allocator
    "defaultcpuallocator: can't allocate memory",  # torch CPU allocator, errno form
    "can't allocate memory",  # ENOMEM from the C library
    "cannot allocate memory",  # ENOMEM strerror
    "std::bad_alloc",  # C++ allocation failure surfacing through bindings
    "failed to allocate memory",
)

_OOM_RE = re.compile("|".join(re.escape(m) for m in OOM_MESSAGES))


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is an out-of-memory error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError):
            return True
        try:
            import torch

            if isinstance(exc, torch.OutOfMemoryError):
                return True
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        if is_oom_message(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_oom_message(text: str) -> bool:
    return _OOM_RE.search(text.lower()) is not None


def status_for_exit(returncode: int | None) -> str:
    """Status of a worker process that ended without reporting. Only a death by SIGKILL
    (the kernel OOM killer's signal, and a cgroup memory limit's) is "oom"; an exit code
    of 137 is a process's own choice (``os._exit(137)``), so a plain failure."""
    if returncode == -signal.SIGKILL:
        return "oom"
    return "failed"


# Signals that stop work without judging it: Ctrl-C, and what `kill` and service
# managers send to ask a process to end.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupted_exit(returncode: int | None) -> bool:
    """True for a process killed by an interrupt signal: its trial has no result."""
    return returncode is not None and returncode < 0 and -returncode in INTERRUPT_SIGNALS


# ENOSPC (no space) and EDQUOT (a quota): both mean "free space, then run again".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = tuple(os.strerror(e).lower() for e in DISK_FULL_ERRNOS)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a full disk or quota.
    By errno, and by message for wrappers that keep only the text (pyarrow's OSError
    carries errno 28; an error reported by a worker arrives as text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if is_disk_full_message(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_disk_full_message(text: str) -> bool:
    text = text.lower()
    return any(t in text for t in _DISK_FULL_TEXTS)


class DiskFull(BenchError):
    """The disk (or quota) holding a sweep's results is full: the sweep stops, having
    written nothing partial, and the same command resumes once there is room.

    Exit code 75 is sysexits.h's EX_TEMPFAIL ("a temporary failure; the user is invited
    to retry"), distinct from bad input (2) and failed trials (1)."""

    exit_code = 75

    @classmethod
    def at(cls, path: str | Path, cause: BaseException | str | None = None) -> DiskFull:
        """The one-line error for ``path``; ``cause``: the OSError, or a worker's text."""
        why = ""
        if isinstance(cause, OSError) and cause.strerror:
            why = f" ({cause.strerror})"
        elif isinstance(cause, str) and cause:
            why = f" ({' '.join(cause.split())})"
        return cls(
            f"disk full at {path}{why}: nothing partial was written; free some space, "
            "then re-run the same command to resume"
        )


def describe(exc: BaseException) -> str:
    """One line for the trial row's ``error`` column."""
    text = " ".join(str(exc).split())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
