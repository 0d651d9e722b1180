"""Imported first by the forkserver (see ``bench.procs.context.PRELOAD``), and by nothing else.

Ctrl-C goes to the whole foreground process group, the forkserver included. CPython's
forkserver ignores SIGINT only once its preload imports are done, and importing torch
takes seconds: without this module, a Ctrl-C in that window prints a 40-line
KeyboardInterrupt traceback from inside torch, after bench's own one-line
"interrupted". The parent handles Ctrl-C (it stops its children and says how to
resume), so the server has nothing to do.

The handler ignores the signal in the server only. The server's children (oom probes,
sweep workers) are forked after this and get back the handler that was in place before
the server's main loop began, i.e. this one: there it raises KeyboardInterrupt, as
Python's default handler does, so they behave as if this module did not exist.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys


def _is_forkserver() -> bool:
    # The server is started as `python -c "from multiprocessing.forkserver import main;
    # main(...)"`, which imports multiprocessing.forkserver before the preload list.
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


_SERVER_PID = os.getpid()


def _on_sigint(signum, frame) -> None:
    if os.getpid() != _SERVER_PID:
        raise KeyboardInterrupt


def _exit_without_teardown() -> None:
    # The server holds the command's stdout and stderr (inherited), so a reader of the
    # command's output through a pipe waits for the server's exit, and tearing down an
    # interpreter with torch loaded takes 1-3 s on a loaded 2-core machine. Its work is
    # done when it exits (its children leave by os._exit): flush, and leave at once.
    if os.getpid() != _SERVER_PID:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


if _is_forkserver():
    signal.signal(signal.SIGINT, _on_sigint)
    atexit.register(_exit_without_teardown)  # first registered: runs after all others
