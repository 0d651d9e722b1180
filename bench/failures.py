"""How a trial ended badly: out of memory, diverged, or failed.

Shared by the trial runner, the process layer (:mod:`bench.procs`: sweep workers and
oom probes) and the OOM search, so that all three call the same thing an OOM. Order: exception type first, then the message
forms the backends and libraries use, then (for a dead worker) death by SIGKILL, which is
what the Linux OOM killer and most cgroup limits send. Anything else is a failure.
"""

from __future__ import annotations

import re
import signal

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
    """Status of a worker process that ended without reporting: SIGKILL counts as OOM."""
    if returncode is not None and returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "oom"
    return "failed"


def describe(exc: BaseException) -> str:
    """One line for the trial row's ``error`` column."""
    text = " ".join(str(exc).split())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
