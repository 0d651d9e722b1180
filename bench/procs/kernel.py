"""What the kernel says about a process: /proc status fields, the RSS high-water mark,
and how a child's exit code reads."""

from __future__ import annotations

import contextlib
import signal


def proc_status_bytes(key: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmData, VmRSS, VmHWM ...) in bytes; None
    when the process is gone or the field is absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> None:
    """Reset this process's VmHWM so the next reading is the coming work's peak
    (Linux >= 4.0: writing 5 to clear_refs)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def exit_text(exitcode: int | None) -> str:
    """How a child ended, in words: "killed by SIGKILL", "exited with code 1"."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
