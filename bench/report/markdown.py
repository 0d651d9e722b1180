"""GitHub-flavoured markdown: the one table printer of ``bench report`` and ``bench
compare``, and the one escaping rule for text that comes from results."""

from __future__ import annotations

import html
import re

from bench.console import plain

_NEWLINES = re.compile(r"\r\n|\r|\n")
_ALIGN_MARKS = {"l": ":--", "r": "--:", "c": ":-:"}
# Inline syntax, meaningful anywhere in a line: the escape itself, code spans, emphasis,
# strikethrough (GFM), links and images, table cells (GFM). CommonMark lets every ASCII
# punctuation character be backslash-escaped, and an escaped one is always literal text.
_INLINE = re.compile(r"([\\`*_~\[\]()!|])")
# Block syntax, meaningful only where a line starts: a heading (#), a list item (- + or
# 1. before a space) or a thematic break (---). A bullet's text starts a line of its own
# (``- 1. x`` is a list in a list); a table cell cannot hold a block, and newlines inside
# a value become <br>, so the start of the text is the only place these need escaping.
_BLOCK_START = re.compile(r"^([#+\-])|^(\d{1,9})(\.)(?=\s|$)")


def md_cell(value: object) -> str:
    """``value`` as literal text in a table cell or after a bullet: nothing in it becomes
    markup. ``&``, ``<`` and ``>`` as HTML entities (GitHub renders inline HTML and
    autolinks ``<http://...>``), inline syntax backslash-escaped, block syntax escaped at
    the start, control characters shown as ``\\xNN`` (``bench compare`` prints this text to
    a terminal), newlines as <br>."""
    text = "" if value is None else str(value)
    lines = _NEWLINES.split(text.strip())
    return "<br>".join(_line(line) for line in lines)


def _line(text: str) -> str:
    text = html.escape(plain(text), quote=False)
    text = _INLINE.sub(r"\\\1", text)
    return _BLOCK_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\.", text)


def md_unescape(text: str) -> str:
    """What a renderer shows for ``md_cell``'s output (tests and tools that read
    report.md as text): backslash escapes and HTML entities resolved, <br> as newlines."""
    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text.replace("<br>", "\n"))
    return html.unescape(text)


def markdown_table(
    headers: list[str], rows: list[list[object]], align: list[str] | None = None
) -> str:
    """A table with a header row; ``align`` per column: "l", "r" or "c" (default "l")."""
    align = align or ["l"] * len(headers)
    lines = [
        "| " + " | ".join(md_cell(h) for h in headers) + " |",
        "| " + " | ".join(_ALIGN_MARKS[a] for a in align) + " |",
    ]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row has {len(r)} cells, table has {len(headers)} columns")
        lines.append("| " + " | ".join(md_cell(v) or " " for v in r) + " |")
    return "\n".join(lines) + "\n"
