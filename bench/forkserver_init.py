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


if _is_forkserver():
    signal.signal(signal.SIGINT, _on_sigint)
