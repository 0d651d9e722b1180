"""An exclusive lock between processes on one machine, held through a lock file.

``fcntl.flock`` rather than a lock file's existence: the kernel drops a process's locks
when it dies, so a ``kill -9`` never leaves a lock behind and nothing waits on a
timeout. Local file systems only (flock over NFS is not reliable).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing; its folder must exist),
    waiting for whoever holds it. Each call opens the file anew, so two holders in one
    process exclude each other too, and a nested call on the same path waits forever."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Unlocked explicitly: a child forked meanwhile shares the open file, and
            # closing only our descriptor would leave the lock held until it exits.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
