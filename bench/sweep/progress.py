"""Sweep progress: a live bar on a terminal, plain log lines otherwise (CI, files)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Counts come from the coordinator; ETA from this run's own completion rate."""

    def __init__(
        self, sweep: str, total: int, *, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.sweep = sweep
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0
        self.running = 0
        self.failed = 0  # done trials whose status is not ok
        self.started = time.monotonic()
        self.done_at_start: int | None = None
        self._last_draw = 0.0
        self._width = 0
        self.closed = False

    def update(self, *, done: int, running: int, failed: int) -> None:
        if self.done_at_start is None:
            self.done_at_start = done
        self.done, self.running, self.failed = done, running, failed
        self.draw()

    def eta_s(self) -> float | None:
        finished_here = self.done - (self.done_at_start or 0)
        if finished_here <= 0:
            return None
        rate = finished_here / (time.monotonic() - self.started)
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        return (
            f"{self.done}/{self.total} done, {self.running} running, {self.failed} not ok, "
            f"ETA {format_duration(self.eta_s())}"
        )

    def draw(self, *, force: bool = False) -> None:
        if not self.tty or self.closed:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        text = f"\r{self.sweep} [{bar}] {self.line()}"
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write(text + " " * pad)
        self.stream.flush()

    def log(self, message: str) -> None:
        """A line that stays (a finished trial, a warning): above the bar on a terminal."""
        if self.tty:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(message + "\n")
        self.stream.flush()
        self.draw(force=True)

    def trial_line(self, message: str) -> None:
        """One line per finished trial, with the counts (plain mode carries the progress)."""
        if self.tty:
            self.log(message)
        else:
            self.log(f"[{self.done}/{self.total}] {message} | {self.line()}")

    def close(self) -> None:
        if self.tty and not self.closed:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        self.closed = True
