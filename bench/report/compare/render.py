"""A comparison as GitHub markdown: for the terminal, a PR comment and the Actions step
summary ($GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import math
import os

from bench.report.compare.comparison import UNTESTED, Comparison
from bench.report.compare.stats import ALPHA, MIN_RUNS
from bench.report.markdown import markdown_table, md_cell

# Said in the summary so that "8 ~" cannot be read as "nothing changed" when most of it
# was never tested.
SUMMARY_NOTES = {
    "~": " (no significant change)",
    UNTESTED: " (too few repeats to test; 4 seeds a side suffice)",
}
VERDICT_ORDER = ("regressed", "improved", "~", UNTESTED, "new", "missing", "n/a")
HEADERS = ["configuration", "metric", "baseline", "candidate", "ratio", "p", "test", "verdict"]
ALIGN = ["l", "l", "r", "r", "r", "r", "l", "c"]


def markdown(c: Comparison) -> str:
    lines = [
        "## bench compare",
        "",
        f"- baseline: {md_cell(c.baseline_desc)}",
        f"- candidate: {md_cell(c.candidate_desc)}",
        f"- verdict needs a change > {c.threshold * 100:g} % and a two-sided Mann–Whitney U "
        f"test at p < {ALPHA} over repeats (seeds); with too few repeats, for timings, over "
        f"within-run steps, and only if ≥ {MIN_RUNS} runs a side all differ by more than the "
        "threshold",
        "",
    ]
    for w in c.warnings:
        lines += [f"> **Warning:** {md_cell(w)}", ""]
    lines += [f"Result: {_summary(c.counts()) or 'nothing to compare'}.", ""]
    rows = [
        [
            r.label,
            r.metric,
            r.baseline,
            r.candidate,
            ratio_text(r.ratio),
            p_text(r.p_value),
            r.basis,
            r.verdict,
        ]
        for r in c.rows
    ]
    lines.append(markdown_table(HEADERS, rows, ALIGN))
    return "\n".join(lines)


def _summary(counts: dict[str, int]) -> str:
    """'**2 regressed**, 6 ~ (no significant change)': rows per verdict, regressions bold."""
    return ", ".join(
        f"{'**' if v == 'regressed' else ''}{counts[v]} {v}{'**' if v == 'regressed' else ''}"
        + SUMMARY_NOTES.get(v, "")
        for v in VERDICT_ORDER
        if counts.get(v)
    )


def ratio_text(r: float | None) -> str:
    if r is None:
        return ""
    if not math.isfinite(r):
        return "∞"
    return f"{r:.3f} ({(r - 1) * 100:+.1f} %)"


def p_text(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2g}"  # e.g. 0.0079, 3.2e-12 (no '<': it would be HTML-escaped in cells)


def append_step_summary(text: str) -> str | None:
    """Append to $GITHUB_STEP_SUMMARY when set; returns a warning line on failure."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        return f"bench: warning: cannot append to GITHUB_STEP_SUMMARY ({exc.strerror or exc})"
    return None
