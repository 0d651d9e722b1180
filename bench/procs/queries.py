"""Questions answered in a fresh child, so the asking process never imports torch or
creates a CUDA context of its own: the memory baseline a cap counts, a workload's size."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.errors import BenchError
from bench.procs import messages as msg
from bench.procs.child import ChildSetup
from bench.procs.handle import ChildProcess


def ask_child(
    function: Callable[..., Any], args: tuple, what: str, timeout_s: float = 300.0
) -> msg.Answer:
    """Call ``function(*args)`` (module-level) in a fresh child and return its Answer. A
    child that dies, hangs (CUDA initialisation, say) or cannot start is a BenchError
    naming ``what``; a BenchError the function raises is raised here as it was."""
    child = ChildProcess(ChildSetup(max_jobs=1), name="bench-query")
    child.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if not child.conn.poll(max(0.0, deadline - time.monotonic())):
                child.kill()
                raise BenchError(f"could not {what}: the child process hung for {timeout_s:g} s")
            try:
                message = child.conn.recv()
                if isinstance(message, msg.Ready):
                    child.send(msg.Query(0, function, args))
                    continue
            except (EOFError, OSError):
                child.join(5)  # reaped first, so the message says how it ended
                raise BenchError(f"could not {what}: child {child.exit_text()}") from None
            break
    finally:
        child.join(5)
        child.kill()
        child.close()
    if isinstance(message, msg.StartupError):
        raise BenchError(f"could not {what}: {message.error}")
    if isinstance(message, msg.Invalid):
        raise BenchError(message.message)
    return message


def measure_baseline(device: str = "auto") -> dict:
    """Memory of an idle child with torch loaded: ``total_bytes`` (machine / card),
    ``baseline_bytes`` (CPU: VmData, what RLIMIT_DATA counts; CUDA: the context),
    measured in a child so the caller never creates a CUDA context of its own."""
    what = "measure the memory baseline"
    answer = ask_child(_baseline, (None if device == "auto" else device,), what)
    if answer.error is not None:
        raise BenchError(f"could not {what}: {answer.error}")
    return answer.value


def _baseline(device: str | None) -> dict:
    from bench.procs.caps import baseline_info, resolve_device_name

    return baseline_info(device or resolve_device_name("auto"))


def inspect_config(config) -> tuple[int, str]:
    """(training-set size, resolved device) of a TrialConfig, found in a child process:
    the workload is built there, so every input error surfaces (as a BenchError) before
    any probe, and the caller neither imports torch nor creates a CUDA context."""
    answer = ask_child(_inspect, (config.to_dict(),), f"build workload {config.workload!r}")
    if answer.error is not None:
        raise BenchError(f"workload {config.workload!r} cannot be built: {answer.error}")
    n_train, device = answer.value
    return int(n_train), device


def _inspect(config_dict: dict) -> tuple[int, str]:
    from bench.config import TrialConfig
    from bench.trial import prepare

    config = TrialConfig.from_mapping(config_dict)
    workload, _plan, device = prepare(config)
    return workload.n_train, str(device)
