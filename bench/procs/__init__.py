"""The one process layer: every bench child process is forked from one forkserver and
runs one child loop, and speaks typed messages over its pipe.

- :mod:`~bench.procs.context`: the forkserver (its preload list, its Ctrl-C guard).
- :mod:`~bench.procs.messages`: the messages, one frozen dataclass each.
- :mod:`~bench.procs.child`: the child loop; :mod:`~bench.procs.handle` the parent's view.
- :mod:`~bench.procs.caps`: memory caps (apply, lift, reapply) and the baseline they count.
- :mod:`~bench.procs.kernel`: /proc status fields, the peak-RSS reset, exit codes.
- :mod:`~bench.procs.oneshot`: one trial in a fresh process (oom probes);
  :mod:`~bench.procs.queries`: questions answered in a fresh child.

A sweep's warm workers (:mod:`bench.sweep.pool`) are the same child loop, kept running.
Imports here stay light: torch loads in the children, or on use.
"""

from bench.procs.caps import (
    CPU_METHOD,
    CUDA_METHOD,
    CapInfo,
    apply_memory_cap,
    baseline_info,
    cuda_context_bytes,
    lift_cpu_cap,
    machine_memory_bytes,
    nvml_used,
    reapply_cpu_cap,
    resolve_device_name,
    warm_cpu_threads,
)
from bench.procs.child import ChildSetup, child_main, child_stats, die_with_parent, warm_up
from bench.procs.context import PRELOAD, forkserver_context
from bench.procs.handle import ChildProcess
from bench.procs.kernel import exit_text, proc_status_bytes, reset_peak_rss
from bench.procs.oneshot import IsolatedRun, run_in_subprocess, run_isolated, run_ladder
from bench.procs.queries import ask_child, inspect_config, measure_baseline
from bench.procs.unreported import unreported_trial_result

__all__ = [
    "CPU_METHOD",
    "CUDA_METHOD",
    "PRELOAD",
    "CapInfo",
    "ChildProcess",
    "ChildSetup",
    "IsolatedRun",
    "apply_memory_cap",
    "ask_child",
    "baseline_info",
    "child_main",
    "child_stats",
    "cuda_context_bytes",
    "die_with_parent",
    "exit_text",
    "forkserver_context",
    "inspect_config",
    "lift_cpu_cap",
    "machine_memory_bytes",
    "measure_baseline",
    "nvml_used",
    "proc_status_bytes",
    "reapply_cpu_cap",
    "reset_peak_rss",
    "resolve_device_name",
    "run_in_subprocess",
    "run_isolated",
    "run_ladder",
    "unreported_trial_result",
    "warm_cpu_threads",
    "warm_up",
]
