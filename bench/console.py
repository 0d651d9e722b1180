"""What bench prints for people: text tables and the live progress line, through rich.

rich (not tqdm) because it does both jobs: tables whose columns size themselves, and a
progress bar that keeps finished-trial lines above it. Everything that comes from data
(option values, error text) is passed as ``rich.text.Text``, never as markup, so a value
like ``[bold]`` or an escape sequence prints as the characters it is.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from rich import box
from rich.console import Console
from rich.control import Control, ControlType
from rich.table import Table
from rich.text import Text

# A rule under the header and nothing else, in ASCII: logs and CI pages show it as is.
_HEADER_RULE = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)

# Characters that move the cursor or colour the terminal: shown as escapes, not obeyed.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F) if c != 0x09}


def plain(value: object) -> str:
    """``value`` as one line of text a terminal shows as written (newlines, ESC escaped)."""
    return str(value).translate(_CONTROL)


def text_table(
    header: Sequence[str] | None,
    rows: Sequence[Sequence[object]],
    *,
    right: Sequence[int] = (),
) -> str:
    """A plain-text table: header, a rule, one line per row (``header=None``: rows only, a
    key/value listing); ``right`` lists the indexes of right-aligned columns. Never
    wraps: a wide table is wide rather than unreadable."""
    table = Table(
        box=_HEADER_RULE, show_edge=False, pad_edge=False, header_style=None, padding=(0, 1, 0, 0),
        show_header=header is not None,
    )  # fmt: skip
    columns = header if header is not None else [""] * max((len(r) for r in rows), default=0)
    for i, name in enumerate(columns):
        justify = "right" if i in right else "left"
        table.add_column(Text(plain(name)), justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(plain(v)) for v in row))
    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


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
    """A sweep's progress: a live bar on a terminal, plain log lines otherwise (CI, files).

    Counts come from the coordinator; the ETA from this run's own completion rate."""

    def __init__(
        self, sweep: str, total: int, *, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.sweep = sweep
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = self.running = self.failed = 0  # failed: done trials whose status is not ok
        self.started = time.monotonic()
        self.done_at_start: int | None = None
        self.closed = False
        self._last_draw = 0.0
        self._console = Console(
            file=self.stream, force_terminal=self.tty, highlight=False, soft_wrap=True
        )
        self._bar_shown = False

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

    def _bar(self) -> Text:
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        return Text.assemble(
            plain(self.sweep), " [", "#" * filled, "-" * (width - filled), "] ",
            self.line(),
        )  # fmt: skip

    def draw(self, *, force: bool = False) -> None:
        if not self.tty or self.closed:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        self._clear()
        self._console.print(self._bar(), end="")
        self._bar_shown = True
        self.stream.flush()

    def _clear(self) -> None:
        if self._bar_shown:
            # Back to column 0 and erase the line (ANSI EL 2): the bar is one line.
            self.stream.write("\r")
            self._console.control(Control((ControlType.ERASE_IN_LINE, 2)))
            self._bar_shown = False

    def log(self, message: str) -> None:
        """A line that stays (a finished trial, a warning): above the bar on a terminal."""
        if self.tty:
            self._clear()
            self._console.print(Text(plain(message)))
            self.draw(force=True)
        else:
            self.stream.write(plain(message) + "\n")
            self.stream.flush()

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
