"""bench.filelock.exclusive: one holder at a time across processes, released when the
holder leaves the block or dies (kill -9), whatever children it forked meanwhile."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.filelock import exclusive

REPO = Path(__file__).resolve().parents[1]


def _held(path: Path) -> bool:
    """Whether someone holds the lock (a try-lock on a fresh open of the file)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the try-lock if it was taken
    return False


def test_a_holder_excludes_others_and_releases_on_exit(tmp_path):
    path = tmp_path / "x.lock"
    with exclusive(path):
        assert _held(path)
        with pytest.raises(BlockingIOError):  # a second holder in this very process too
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
    assert not _held(path)


def test_a_killed_holder_releases_at_once(tmp_path):
    path = tmp_path / "x.lock"
    code = (
        "import sys, time\nfrom bench.filelock import exclusive\n"
        f"with exclusive({str(path)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _held(path)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        t0 = time.monotonic()
        with exclusive(path):
            assert time.monotonic() - t0 < 1.0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_child_forked_inside_the_block_does_not_keep_the_lock(tmp_path):
    path = tmp_path / "x.lock"
    with exclusive(path):
        pid = os.fork()
        if pid == 0:  # the child shares the open file; it outlives the block
            time.sleep(5)
            os._exit(0)
    try:
        assert not _held(path)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
