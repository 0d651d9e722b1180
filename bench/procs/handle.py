"""A child running :func:`bench.procs.child.child_main`, seen from its parent."""

from __future__ import annotations

import time
from typing import Any

from bench.procs.child import ChildSetup, child_main
from bench.procs.context import forkserver_context
from bench.procs.kernel import exit_text, proc_status_bytes


class ChildProcess:
    """One child process and the parent's end of its pipe. Built unstarted, so a caller
    can keep hold of it before :meth:`start` (an interrupt during start leaves a process
    object whose ``pid`` is None, which :meth:`stop` skips)."""

    def __init__(self, setup: ChildSetup, *, name: str, daemon: bool = True) -> None:
        ctx = forkserver_context()
        self.conn, self._child_end = ctx.Pipe(duplex=True)
        # daemon=False for a child that starts children of its own (a sweep worker that
        # runs data-parallel trials starts their ranks): multiprocessing refuses children
        # to a daemonic process. It still dies with its parent (ChildSetup.watch_pid).
        self.process = ctx.Process(
            target=child_main, args=(self._child_end, setup), name=name, daemon=daemon
        )
        self.started = 0.0  # time.monotonic() at start

    def start(self) -> None:
        self.process.start()
        self._child_end.close()
        self.started = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def sentinel(self) -> Any:
        """Ready (for multiprocessing.connection.wait) when the process has ended."""
        return self.process.sentinel

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def exit_text(self) -> str:
        return exit_text(self.process.exitcode)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def peak_rss(self) -> int | None:
        """The child's RSS high-water mark (VmHWM) as the kernel has it now; None once
        it is gone. Polled while it runs, it survives as a measurement even if the child
        is killed before it can report."""
        return proc_status_bytes("VmHWM", self.pid) if self.pid else None

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.process.pid is None:
            return
        if self.process.is_alive():
            self.process.kill()
        self.process.join()

    def close(self) -> None:
        """Close the parent's end of the pipe (and the child's, if never started)."""
        self.conn.close()
        self._child_end.close()

    def stop(self, *, deadline: float) -> None:
        """Wait for the child to exit until ``deadline`` (time.monotonic()), then kill it;
        close the pipe. The caller sends Stop first if the child is idle."""
        if self.process.pid is not None:  # an interrupt during start(): nothing to join
            self.process.join(timeout=max(0.0, deadline - time.monotonic()))
            self.kill()
        self.close()
