"""GitHub-flavoured markdown: the one table printer of ``bench report`` and ``bench
compare``, and the one escaping rule for text that comes from results."""

from __future__ import annotations

import html
import re

_NEWLINES = re.compile(r"\r\n|\r|\n")
_ALIGN_MARKS = {"l": ":--", "r": "--:", "c": ":-:"}


def md_cell(value: object) -> str:
    """One table cell: HTML escaped (GitHub renders inline HTML), backslashes and pipes
    escaped (a `|` would split the cell: GFM spec, tables extension), newlines as <br>."""
    text = "" if value is None else str(value)
    text = html.escape(text, quote=False)
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = _NEWLINES.sub("<br>", text.strip())
    return text


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
