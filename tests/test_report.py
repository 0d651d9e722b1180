"""bench report: known answers on synthetic results, markdown/HTML safety, bad input."""

from __future__ import annotations

import html
import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from bench.report import build, curves, pareto, scaling, tables
from bench.report.build import build_report, write_report
from bench.report.folders import newest_sweep
from bench.report.markdown import md_unescape
from bench.report.prepare import prepare
from bench.report.synthetic import Synthetic, write_synthetic
from bench.store import Results, load_results, trials_table, write_atomic

REPO = Path(__file__).resolve().parents[1]

# Values that try to break a markdown table or inject HTML.
NASTY = "a|b\nc\r\n<script>alert('x')</script> & <b>bold</b> \\| $unbalanced end"


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def gfm_cells(line: str) -> list[str]:
    """Split a GFM table row as the tables extension does: a pipe preceded by a backslash
    escape does not split; a backslash escapes the next character."""
    body = line.strip()
    assert body.startswith("|") and body.endswith("|") and not body.endswith("\\|"), line
    cells, cur, i = [], "", 1
    while i < len(body) - 1:
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) - 1:
            cur += body[i : i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    cells.append(cur)
    return cells


def markdown_tables(text: str) -> list[list[str]]:
    """Blocks of consecutive lines starting with '|'."""
    blocks, cur = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def assert_tables_parse(text: str, expect_tables: int) -> None:
    blocks = markdown_tables(text)
    assert len(blocks) == expect_tables
    for block in blocks:
        n = len(gfm_cells(block[0]))
        assert re.fullmatch(r"\|( :?-+:? \|)+", block[1]), block[1]
        for line in block:
            assert len(gfm_cells(line)) == n, line


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results") / "sweep-a"
    write_synthetic(folder, Synthetic(oom_above=64))
    return folder


@pytest.fixture(scope="module")
def report(sweep):
    return build_report(sweep)


# -- steps to target and the B_crit fit --------------------------------------------------------


@pytest.mark.parametrize("b_crit", [2.0, 40.0, 900.0])
def test_fit_exact_curve(b_crit):
    big_b = np.array([1, 4, 16, 64, 256, 1024, 4096], dtype=float)
    fit = scaling.fit_critical_batch(big_b, 123.0 * (1 + b_crit / big_b))
    assert fit.b_crit == pytest.approx(b_crit, rel=1e-6)
    assert fit.s_min == pytest.approx(123.0, rel=1e-6)
    assert fit.bound is None and fit.b_crit_text() == f"B_crit ≈ {fit.b_crit:.3g}"
    assert fit.e_min == pytest.approx(123.0 * b_crit, rel=1e-6)


@pytest.mark.parametrize(
    ("big_b", "steps", "bound", "text"),
    [
        # Perfect 1/B scaling over the whole range: B_crit lies above it (the least-squares
        # value is 1.7e19).
        (2.0 ** np.arange(6), 1000.0 / 2.0 ** np.arange(6), ">", "B_crit > 32"),
        # Planted B_crit = 20000 measured only up to 256: even exact points leave it
        # unlocated (noise moves the fitted value by a factor 2, see the end-to-end test).
        (2.0 ** np.arange(3, 9), 100.0 * (1 + 20000 / 2.0 ** np.arange(3, 9)), ">", "B_crit > 256"),
        # Flat steps: every B measured is past B_crit (the least-squares value is 1e-9).
        (2.0 ** np.arange(3, 9), np.full(6, 100.0), "<", "B_crit < 8"),
    ],
)
def test_fit_outside_measured_batches_is_a_bound(big_b, steps, bound, text):
    fit = scaling.fit_critical_batch(big_b, steps)
    assert fit.bound == bound
    assert fit.b_crit_text() == text


def test_fit_needs_three_batch_sizes():
    assert (
        scaling.fit_critical_batch(np.array([4.0, 8.0, 8.0]), np.array([100.0, 60.0, 61.0])) is None
    )


@pytest.mark.parametrize(
    ("b_crit", "s_min", "shapes"),
    [
        (32.0, 100.0, ((1, 1), (4, 1), (16, 1), (64, 1), (256, 1), (1024, 1))),
        (256.0, 20.0, ((2, 1), (8, 1), (32, 1), (128, 1), (512, 1), (2048, 1), (8192, 1))),
    ],
)
def test_report_recovers_planted_b_crit(tmp_path, b_crit, s_min, shapes):
    """End to end through noisy per-step losses: parquet -> steps to target -> fit."""
    write_synthetic(
        tmp_path,
        Synthetic(
            shapes=shapes,
            b_crit=b_crit,
            s_min=s_min,
            samples=100_000,
            noise=0.3,
            seeds=(0, 1, 2),
            rng_seed=7,
        ),
    )
    rep = build_report(tmp_path, target=0.5, figures=False)
    (fit,) = rep.fits.values()
    assert fit.b_crit == pytest.approx(b_crit, rel=0.10)
    assert fit.bound is None and not rep.bounds
    assert fit.s_min == pytest.approx(s_min, rel=0.10)
    # The automatic target (no --target-loss) recovers it as well: the planted law holds
    # at every loss level of these curves.
    auto = build_report(tmp_path, figures=False)
    assert list(auto.fits.values())[0].b_crit == pytest.approx(b_crit, rel=0.10)


@pytest.mark.parametrize(
    ("b_crit", "text"),
    [(20000.0, "B_crit > 256 samples: steps still fall ~1/B"), (0.01, "B_crit < 8 samples")],
)
def test_report_gives_a_bound_for_b_crit_outside_the_batches(tmp_path, b_crit, text):
    """Planted B_crit beyond (or below) every measured B: the report states a bound, and
    no B_crit number anywhere (the fit had printed 8.57e3 for 20000, 0.296 for 0.01)."""
    shapes = tuple((b, 1) for b in (8, 16, 32, 64, 128, 256))
    spec = Synthetic(shapes=shapes, b_crit=b_crit, s_min=50.0, samples=100_000, seeds=(0,))
    write_synthetic(tmp_path, spec)
    rep = build_report(tmp_path, target=0.5)
    assert not rep.fits and list(rep.bounds) == ["seed-mlp"]
    # As a reader sees them: markdown's escapes and both documents' entities resolved.
    for doc in (md_unescape(rep.markdown), html.unescape(rep.html)):
        assert text in doc
        assert "B_crit ≈" not in doc
    assert build.summary_numbers(rep)["b_crit"] == {}


def test_report_command_line_prints_the_bound_not_a_number(tmp_path, capsys):
    import argparse

    from bench.report.command import report_main

    shapes = tuple((b, 1) for b in (8, 16, 32, 64, 128, 256))
    write_synthetic(tmp_path, Synthetic(shapes=shapes, b_crit=20000.0, s_min=50.0, seeds=(0,)))
    args = argparse.Namespace(
        results=[tmp_path], out=tmp_path / "out", target_loss=0.5, prefer=None, storage=None
    )
    assert report_main(args) == 0
    assert "seed-mlp: B_crit > 256" in capsys.readouterr().out


def _steps(key: str, losses: list[float], big_b: int = 1) -> pd.DataFrame:
    n = len(losses)
    return pd.DataFrame(
        {
            "trial_key": key,
            "step": np.arange(1, n + 1, dtype=float),
            "loss": losses,
            "samples_seen": np.arange(1, n + 1, dtype=float) * big_b,
            "time_s": np.arange(1, n + 1, dtype=float) * 0.5,
        }
    )


def test_steps_to_target_first_crossing_and_never():
    steps = pd.concat(
        [
            _steps("a", [5, 4, 3, 2, 1, 0.5, 0.4]),
            _steps("b", [5, 4, 3, 2, 1.5, 1.2, 1.1]),  # never reaches 1.0
            _steps(
                "c", [5, 4, float("nan"), 0.1, 0.1, 0.1, 0.1]
            ),  # diverged at step 3 ... then low
        ]
    )
    trials = pd.DataFrame({"trial_key": ["a", "b", "c", "d"], "effective_batch_size": [1.0] * 4})
    r = scaling.steps_to_target(steps, trials, 1.0).set_index("trial_key")
    assert r.loc["a", "steps_to_target"] == 5  # B = max B: window 1, first loss <= 1
    assert r.loc["a", "samples_to_target"] == 5
    assert r.loc["a", "time_to_target_s"] == 2.5
    assert np.isnan(r.loc["b", "steps_to_target"])
    assert r.loc["c", "steps_to_target"] == 4  # a NaN step is never 'reached'
    assert np.isnan(r.loc["d", "steps_to_target"])  # no steps at all


def test_targets_are_per_workload():
    # Two workloads on different loss scales: one target for both would be met at once by
    # the low one and never by the high one.
    steps = pd.concat(
        [
            _steps("lo", [0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5]),
            _steps("hi", [9.0, 8.0, 7.0, 6.0, 5.0, 5.0, 5.0]),
        ]
    )
    trials = pd.DataFrame(
        {
            "trial_key": ["lo", "hi"],
            "workload": ["small-loss", "big-loss"],
            "status": ["ok", "ok"],
            "config_id": ["lo", "hi"],
            "effective_batch_size": [1.0, 1.0],
        }
    )
    targets = scaling.default_targets(steps, trials)
    assert targets == {"big-loss": 5.0, "small-loss": 0.5}
    r = scaling.steps_to_target(steps, trials, targets).set_index("trial_key")
    assert r.loc["lo", "steps_to_target"] == 5 and r.loc["hi", "steps_to_target"] == 5
    assert scaling.target_of(targets, "big-loss") == 5.0 and scaling.target_of(0.3, "x") == 0.3


def test_smoothing_ignores_a_lucky_dip():
    """A batch-1 run among batch-16 runs is judged on a mean over ~16 samples."""
    noisy = [5.0] * 40
    noisy[3] = 0.0  # one lucky step early on
    for i in range(30, 40):
        noisy[i] = 0.5
    steps = pd.concat([_steps("small", noisy, 1), _steps("big", [2.0] * 40, 16)])
    trials = pd.DataFrame({"trial_key": ["small", "big"], "effective_batch_size": [1.0, 16.0]})
    r = scaling.steps_to_target(steps, trials, 1.0).set_index("trial_key")
    assert r.loc["small", "smoothing_steps"] == 3  # ceil(16/1)=16, capped at 40//20=2 -> odd 3
    assert r.loc["small", "steps_to_target"] > 30


# -- configurations, tables, Pareto ------------------------------------------------------------


def test_configurations_group_seeds_and_marks_never_reached(report):
    s = report.summary
    assert len(s) == 6  # 6 shapes, 3 seeds each
    assert set(s["seeds"]) == {3}
    oom = s[s["micro_batch_size"] > 64]
    assert list(oom["oom"]) == [3] and oom["samples_per_s"].isna().all()
    assert "not reached" not in "".join(tables.config_rows(s)[0])
    md = md_unescape(report.markdown)
    assert "oom 3" in md
    # B_crit printed in the report
    assert re.search(r"B_crit ≈ \d", md)


def test_never_reached_configuration_is_shown_not_dropped(tmp_path):
    # max_steps caps the small batches: B=1 needs 100*(1+32) = 3300 steps, gets 1000.
    write_synthetic(tmp_path, Synthetic(max_steps=1000, seeds=(0, 1)))
    rep = build_report(tmp_path, target=0.5, figures=False)
    row = rep.summary[rep.summary["effective_batch_size"] == 1].iloc[0]
    assert row["seeds_reached"] == 0 and np.isinf(row["steps_to_target"])
    assert "not reached" in tables.reach_text(row, "steps_to_target", "steps")
    assert len(rep.points) == 6  # still a point, drawn as 'not reached'


def test_pareto_mask_known_answer():
    s = pd.DataFrame(
        {
            "samples_per_s": [100, 200, 150, 200, np.nan],
            "trial_memory_bytes": [10, 20, 30, 20, 1],
            "tail_loss": [1.0, 1.0, 1.0, 0.9, 0.1],
            # The last step's loss would put 1 on the front instead of 3: not used.
            "final_loss": [1.0, 0.5, 1.0, 0.9, 0.1],
        }
    )
    # 0: least memory -> front; 1: dominated by 3 (same speed/memory, lower tail loss);
    # 2: dominated by 1 and 3; 3: front; 4: no throughput -> cannot be placed.
    assert list(pareto.pareto_mask(s)) == [True, False, False, True, False]


def test_pareto_front_is_per_workload():
    # Workload "big" is faster, smaller and lower in loss than "small" on raw numbers,
    # but its numbers are not on the scale of "small"'s: each workload has a front.
    s = pd.DataFrame(
        {
            "workload": ["big", "big", "small", "small", "small"],
            "samples_per_s": [1000.0, 900.0, 10.0, 20.0, 5.0],
            "trial_memory_bytes": [1.0, 2.0, 100.0, 100.0, 200.0],
            "tail_loss": [0.1, 0.2, 3.0, 3.0, 4.0],
        }
    )
    # small: 3 (faster at the same memory and loss) dominates 2 and 4.
    assert list(pareto.pareto_mask(s)) == [True, False, False, True, False]
    # One workload with no loss at all still gets a front over the other objectives.
    s.loc[s["workload"] == "small", "tail_loss"] = np.nan
    assert list(pareto.pareto_mask(s)) == [True, False, False, True, False]


def test_config_identity_without_config_json():
    rows = [
        {
            "trial_key": f"k{seed}{b}",
            "workload": "w",
            "mode": "mbgd",
            "micro_batch_size": b,
            "accumulation_steps": 1,
            "lr": 0.1,
            "seed": seed,
            "status": "ok",
            "samples_per_s": 1.0,
        }
        for seed in (0, 1)
        for b in (2, 4)
    ]
    t = trials_table(rows).to_pandas()
    prep = prepare(Results(trials=t, steps=pd.DataFrame({"trial_key": [], "step": [], "loss": []})))
    assert prep.trials.groupby("config_id")["seed"].nunique().tolist() == [2, 2]
    assert sorted(prep.configs["config_label"]) == ["mbgd B=2 (2×1)", "mbgd B=4 (4×1)"]
    assert list(prep.trials["effective_batch_size"]) == [2, 4, 2, 4]  # derived b*k


@pytest.mark.parametrize("value", [NASTY, "|", "\n", "<td>", "\\", "x\\|y"])
def test_md_cell_never_splits(value):
    line = tables.markdown_table(["a", "b"], [[value, value]])
    assert_tables_parse(line, 1)
    assert "<td>" not in line and "<script" not in line


def test_markdown_and_html_survive_nasty_config_values(tmp_path):
    write_synthetic(
        tmp_path,
        Synthetic(
            workload=NASTY,
            shapes=((4, 1), (16, 1)),
            extra_config={"workload_options": {"note": NASTY}},
        ),
    )
    write_synthetic(
        tmp_path,
        Synthetic(
            workload=NASTY,
            shapes=((4, 1), (16, 1)),
            extra_config={"workload_options": {"note": "plain"}},
        ),
    )
    rep = build_report(tmp_path)
    assert any("note=a|b" in lab for lab in rep.summary["config_label"])  # in the label
    assert_tables_parse(rep.markdown, 3)
    for text in (rep.markdown, rep.html):
        assert "<script>alert" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert" in rep.html
    assert len(re.findall(r"<script>", rep.html)) == 1  # only the page's own check script


# -- markdown and HTML as a renderer shows them ----------------------------------------------

# Option values that would turn into an image, a link, emphasis, code, a heading or a
# nested list if a document took them as markup; each holds a marker word of its own.
PLANTED = {
    "img": "![img1](http://e.invalid/p.png)",
    "link": "[link1](http://e.invalid/x)",
    "em": "*emph1* _emph2_ **strong1** ~~del1~~",
    "code": "`tick1` ``tick2``",
    "block": "# hd1 1. - + > x",
    "auto": "<http://e.invalid/auto1>",
}
MARKERS = ("img1", "link1", "emph1", "emph2", "strong1", "del1", "tick1", "tick2", "hd1", "auto1")
# Elements that planted text must never be inside of, or make.
MARKUP_TAGS = ("img", "a", "em", "strong", "code", "del", "s", "h1", "h2", "h3", "blockquote")


@dataclass
class Rendered:
    elements: list[tuple[str, dict, str]]  # (tag, attributes, text inside)
    text: str  # every text node, in order: what a reader sees


def render_html(page: str) -> Rendered:
    from html.parser import HTMLParser

    elements: list[tuple[str, dict, str]] = []
    stack: list[int] = []
    text: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            elements.append((tag, dict(attrs), ""))
            if tag not in ("img", "br", "hr", "meta", "input"):
                stack.append(len(elements) - 1)

        def handle_endtag(self, tag):
            for i in reversed(range(len(stack))):
                if elements[stack[i]][0] == tag:
                    del stack[i:]
                    break

        def handle_data(self, data):
            text.append(data)
            for i in stack:
                tag, attrs, inside = elements[i]
                elements[i] = (tag, attrs, inside + data)

    Parser(convert_charrefs=True).feed(page)
    return Rendered(elements, "".join(text))


def render_markdown(text: str) -> Rendered:
    """markdown-it-py, GFM-like (tables, strikethrough, inline HTML); without linkify,
    which needs linkify-it-py."""
    markdown_it = pytest.importorskip("markdown_it")
    return render_html(markdown_it.MarkdownIt("gfm-like", {"linkify": False}).render(text))


def assert_no_markup_from(doc: Rendered, planted: dict[str, str]) -> None:
    """No element made of or around planted text (no image or link to it, no emphasis,
    code, heading or list), and every planted value shown as the characters it is."""
    for tag, attrs, inside in doc.elements:
        assert "e.invalid" not in " ".join(map(str, attrs.values())), (tag, attrs)
        if tag in MARKUP_TAGS:
            assert not any(m in inside for m in MARKERS), (tag, inside)
    for key, value in planted.items():
        assert value in doc.text, key


@pytest.mark.parametrize("key", sorted(PLANTED))
def test_md_cell_makes_no_markup_in_a_cell_or_a_bullet(key):
    value = PLANTED[key]
    text = f"- {tables.md_cell(value)}\n\n" + tables.markdown_table(["a", "b"], [[value, "x"]])
    doc = render_markdown(text)
    assert_no_markup_from(doc, {key: value})
    assert doc.text.count(value) == 2  # in the bullet and in the cell, as typed
    assert [t for t, _, _ in doc.elements].count("li") == 1  # no list inside the bullet


@pytest.mark.parametrize("value", ["red\x1b[31m", "bell\x07", "nul\x00", "del\x7f"])
def test_md_cell_shows_control_characters_as_escapes(value):
    # compare prints this markdown to a terminal: an ESC would be obeyed, not shown.
    cell = tables.md_cell(value)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in cell), repr(cell)
    assert md_unescape(cell) == value.encode("unicode_escape").decode()  # "red\\x1b[31m"


def test_report_markdown_and_html_make_no_markup_from_option_values(tmp_path):
    for note in (" ".join(PLANTED.values()), "plain"):  # varies, so labels show it
        write_synthetic(
            tmp_path,
            Synthetic(shapes=((4, 1), (16, 1)), extra_config={"workload_options": {"note": note}}),
        )
    rep = build_report(tmp_path)
    assert any(PLANTED["img"] in lab for lab in rep.summary["config_label"])
    md = render_markdown(rep.markdown)
    assert_no_markup_from(md, PLANTED)
    figures = [a for t, a, _ in md.elements if t == "img"]
    assert [a["src"] for a in figures] == [f"figures/{f.name}.png" for f in rep.figures]
    assert assert_tables_render(md) == len(markdown_tables(rep.markdown))
    assert_no_markup_from(render_html(rep.html), PLANTED)


def assert_tables_render(doc: Rendered) -> int:
    """Every row of every rendered table has as many cells as its header row; returns
    how many tables there are."""
    tables_: list[list[int]] = []
    for tag, _, _ in doc.elements:
        if tag == "table":
            tables_.append([])
        elif tag == "tr":
            tables_[-1].append(0)
        elif tag in ("th", "td"):
            tables_[-1][-1] += 1
    for rows in tables_:
        assert rows and rows[0] > 0 and set(rows) == {rows[0]}, rows
    return len(tables_)


# -- figures, documents, files -----------------------------------------------------------------


def seed_like(folder: Path, **kw) -> Path:
    """Like experiments/seed.toml on a CPU: two dataset sizes, the tensor and the
    DataLoader path at one shape, accumulation 8x4 beside 32x1; 2 seeds each."""
    common = {"seeds": (0, 1), "gpu": False, "rss_start": True, **kw}
    for samples, path, shapes in (
        (100, "tensor", ((1, 1), (20, 1), (100, 1))),
        (10000, "tensor", ((32, 1), (8, 4))),
        (10000, "dataloader", ((32, 1),)),
    ):
        spec = Synthetic(samples=samples, shapes=shapes, extra_config={"data_path": path}, **common)
        write_synthetic(folder, spec)
    return folder


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory):
    folder = seed_like(tmp_path_factory.mktemp("seed") / "seed")
    return build_report(folder, figures=False)


def drawn(report) -> list[tuple[str, object]]:
    """The report's figures as matplotlib Figures, laid out and drawn (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = build.figure_objects(report)
    for _, fig in figures:
        FigureCanvasAgg(fig).draw()
    return figures


@pytest.fixture(scope="module")
def oom_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oom") / "s"
    write_synthetic(folder, Synthetic(shapes=((4, 1), (16, 1), (64, 1)), seeds=(0,)))
    write_oom_searches(folder)
    return build_report(folder, figures=False)


@pytest.fixture(scope="module")
def lr_report(tmp_path_factory):
    """Three learning rates per shape: same throughput and memory, points on one spot."""
    folder = tmp_path_factory.mktemp("lr") / "s"
    spec = Synthetic(shapes=((4, 1), (16, 1), (64, 1)), lrs=(0.01, 0.1, 1.0), seeds=(0,))
    write_synthetic(folder, spec)
    return build_report(folder, figures=False)


@pytest.fixture(scope="module")
def split_report(tmp_path_factory):
    """One effective batch B = 64 split four ways, as experiments/accumulation.toml."""
    folder = tmp_path_factory.mktemp("split") / "s"
    shapes = ((64, 1), (32, 2), (16, 4), (8, 8))
    write_synthetic(folder, Synthetic(shapes=shapes, seeds=(0, 1), gpu=False, rss_start=True))
    return build_report(folder, figures=False)


@pytest.mark.parametrize(
    "which", ["report", "seed_report", "oom_report", "lr_report", "split_report"]
)
def test_figure_legends_sit_outside_every_axes_and_ticks_never_repeat(request, which):
    rep = request.getfixturevalue(which)
    figures = drawn(rep)
    assert len(figures) >= 4
    for name, fig in figures:
        renderer = fig.canvas.get_renderer()
        legends = [*fig.legends, *(a.get_legend() for a in fig.axes if a.get_legend())]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_label())
            for text in legend.get_texts():  # short: ids and what differs, not every key
                assert len(text.get_text()) <= 60, (name, text.get_text())
        for ax in fig.axes:  # point labels (configuration ids) never print over each other
            boxes = [t.get_window_extent(renderer) for t in ax.texts]
            for i, a in enumerate(boxes):
                assert not any(a.overlaps(b) for b in boxes[i + 1 :]), (name, ax.texts[i])
            for axis in (ax.xaxis, ax.yaxis):
                lo, hi = sorted(axis.get_view_interval())
                labels = [
                    t.get_text()
                    for t, loc in zip(
                        axis.get_majorticklabels(), axis.get_majorticklocs(), strict=True
                    )
                    if lo <= loc <= hi and t.get_text()
                ]
                assert len(labels) == len(set(labels)), (name, labels)


def test_short_labels_and_the_legend_table(seed_report):
    prep = seed_report.prep
    short = dict(zip(prep.configs["config_tag"], prep.configs["config_short"], strict=True))
    assert short["C1"] == "C1 sgd B=1 (1×1)"  # alone at its shape: the shape says it
    # Two configurations at 32x1 differ by the data path only: that, and nothing else.
    at32 = sorted(v for v in short.values() if "(32×1)" in v)
    assert [v.split(" ", 1)[1] for v in at32] == [
        "mbgd B=32 (32×1) data_path=dataloader",
        "mbgd B=32 (32×1) data_path=tensor",
    ]
    headers, rows, _, shared = tables.legend(prep)
    assert headers == ["id", "workload", "mode", "b", "k", "B", "data_path", "samples"]
    assert [r[0] for r in rows] == [f"C{i}" for i in range(1, 7)]
    assert "optimizer=sgd" in shared and "lr=0.01" in shared
    md = md_unescape(seed_report.markdown)
    assert "## Configurations in full" in md
    assert "| C4 | seed-mlp | mbgd | 32 | 1 | 32 | dataloader | 10000 |" in md


def test_throughput_draws_one_line_per_family_never_pools_configurations(seed_report):
    """32x1 on the tensor and on the DataLoader path, N = 100 and N = 10000: four
    families (N=100 k=1, N=10000 k=1 tensor, N=10000 k=4, dataloader), each point one
    configuration, so no line holds two values at one b."""
    (fig,) = [f for n, f in drawn(seed_report) if n == "throughput"]
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert len(lines) == 4
    for ln in lines:
        x = list(ln.get_xdata())
        assert len(x) == len(set(x)), x


def test_one_batch_split_several_ways_is_one_line_across_b(split_report):
    """Along b, the splits of one B are one line (B=64), not a point per k; along B each
    split is its own point, never pooled into one median; each panel says which."""
    figures = drawn(split_report)
    # Steps against B with one B is one point: left out, and the notes say why.
    assert "steps_to_target" not in [n for n, _ in figures]
    assert any(
        n.startswith("steps to target: one effective batch size (B = 64)")
        for n in split_report.notes
    )
    (fig,) = [f for n, f in figures if n == "throughput"]
    along_b, along_big_b = (
        [ln for ln in a.get_lines() if len(ln.get_xdata())] for a in fig.axes[:2]
    )
    assert len(along_b) == 1 and sorted(along_b[0].get_xdata()) == [8, 16, 32, 64]
    assert len(along_big_b) == 4 and all(list(ln.get_xdata()) == [64] for ln in along_big_b)
    titles = [a.get_legend().get_title().get_text() for a in fig.axes[:2]]
    assert titles == ["configurations alike but for b", "configurations alike but for b, k, B"]
    names = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert names == ["k=1", "k=2", "k=4", "k=8"]  # numbers in numeric order
    from bench.report.figures.families import family_order

    assert family_order(["lr=0.1", "lr=1", "lr=0.01", "k=16 lr=1", "k=2 lr=1"]) == [
        "k=2 lr=1",
        "k=16 lr=1",
        "lr=0.01",
        "lr=0.1",
        "lr=1",
    ]


def test_pareto_colours_only_losses_that_differ(split_report, lr_report):
    """Splits of one B reach one tail loss (up to rounding): one colour and a note, no
    colour scale over the noise; learning rates that differ keep their scale."""
    from bench.report.figures.plot_pareto import pareto as pareto_figure

    alike = split_report.summary.copy()
    alike["tail_loss"] = 1.028363 + 1e-8 * np.arange(len(alike))  # float rounding apart
    fig = pareto_figure(alike, [], split_report.tolerance)
    assert len(fig.axes) == 1 and "tail loss alike in all" in fig.axes[0].get_title("right")
    (fig,) = [f for n, f in drawn(lr_report) if n == "pareto"]
    assert len(fig.axes) == 2  # the plot and its colour bar


@pytest.mark.parametrize(
    ("lo", "hi"), [(315.1 * 2**20, 315.6 * 2**20), (0.0, 1.1 * 2**20), (2**28, 2**31)]
)
def test_byte_ticks_never_repeat_a_label(lo, hi):
    """305 MiB three times on one axis (three significant digits over a ~1 MiB range)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from bench.report.figures import axes

    fig, ax = axes.new_figure(1, 1)
    ax = ax[0, 0]
    ax.plot([1, 2], [lo, hi])
    axes.bytes_axis(ax, "y")
    FigureCanvasAgg(fig).draw()
    ticks = zip(ax.yaxis.get_majorticklabels(), ax.yaxis.get_majorticklocs(), strict=True)
    labels = [t.get_text() for t, v in ticks if lo * 0.999 <= v <= hi * 1.001 and t.get_text()]
    assert len(labels) >= 3 and len(labels) == len(set(labels)), labels


# -- memory a trial adds, resolution, Pareto ties ------------------------------------------------


def test_cpu_memory_is_growth_and_noise_below_resolution_is_said_not_drawn(tmp_path):
    """A CPU sweep whose trials add nothing but noise (±50 KiB) on a ~300 MiB process:
    the tables show the growth, the memory figure is left out with a note that says what
    the spread is, and memory does not decide the Pareto front."""
    folder = seed_like(tmp_path / "s", memory_per_sample_bytes=0, rss_noise_bytes=50 * 2**10)
    rep = build_report(folder)
    assert (rep.summary["trial_memory_bytes"] < 2**20).all()  # growth, not the process
    assert set(rep.summary["trial_memory_source"]) == {"cpu_rss_growth_bytes"}
    assert "memory" not in [f.name for f in rep.figures]
    (note,) = [n for n in rep.notes if n.startswith("memory (seed-mlp)")]
    assert "below what it resolves" in note and "median over 6 configurations" in note
    res = rep.resolutions["seed-mlp"]["trial_memory_bytes"]
    assert res.spread_bytes is not None and res.step_bytes is None  # no env record: no CPU count
    assert rep.tolerance["seed-mlp"]["trial_memory_bytes"] == res.bytes > 0
    # With memory a tie, the front is what samples/s and tail loss decide alone.
    s = rep.summary
    alone = pareto.pareto_mask(s.assign(trial_memory_bytes=0.0), rep.tolerance)
    assert list(s["pareto"]) == list(alone)


def test_cpu_memory_growth_above_resolution_is_drawn_per_family(tmp_path):
    folder = seed_like(tmp_path / "s", memory_per_sample_bytes=2**20)  # 1 MiB per sample
    (folder / "env").mkdir()
    (folder / "env" / "e.json").write_text(json.dumps({"cpu_count": 2}))
    rep = build_report(folder, figures=False)
    res = rep.resolutions["seed-mlp"]["cpu_rss_growth_bytes"]
    assert res.step_bytes == 2 * 32 * 4096 * 2  # two readings, 32 pages per CPU, 2 CPUs
    row = rep.summary.set_index("config_tag").loc["C6"]  # bgd B=100: b = 100
    assert row["trial_memory_bytes"] == pytest.approx(100 * 2**20, rel=0.01)
    (fig,) = [f for n, f in drawn(rep) if n == "memory"]
    lines = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata())]
    assert len(lines) == 4  # one per family, as throughput
    assert not [n for n in rep.notes if n.startswith("memory (")]


def test_pareto_ties_within_tolerance():
    s = pd.DataFrame(
        {
            "workload": ["w"] * 3,
            "samples_per_s": [1000.0, 1000.0, 1020.0],
            "trial_memory_bytes": [10 * 2**20, 10.3 * 2**20, 10.3 * 2**20],
            "tail_loss": [1.0, 1.0, 1.0],
        }
    )
    # Exact: 0 (least memory) and 2 (fastest) are on the front, 1 is dominated by both.
    assert list(pareto.pareto_mask(s)) == [True, False, True]
    # 0.3 MiB is within a 0.5 MiB resolution and 2 % within a 3 % spread: all tie.
    tol = {"w": {"trial_memory_bytes": 0.5 * 2**20, "samples_per_s": 0.03, "tail_loss": 0.0}}
    assert list(pareto.pareto_mask(s, tol)) == [True, True, True]
    # Memory a tie, speed not: 2 is faster by more than 1 %, the others are dominated.
    tol["w"]["samples_per_s"] = 0.01
    assert list(pareto.pareto_mask(s, tol)) == [False, False, True]


def test_pareto_tolerances_come_from_the_spread_across_seeds():
    t = pd.DataFrame(
        {
            "workload": ["w"] * 6,
            "status": ["ok"] * 6,
            "config_id": ["a", "a", "b", "b", "c", "c"],
            "samples_per_s": [100.0, 110.0, 200.0, 204.0, 50.0, 50.0],
            "tail_loss": [1.0, 1.2, 0.5, 0.6, 0.3, 0.3],
            "trial_memory_bytes": [1.0] * 6,
        }
    )
    tol = pareto.tolerances(t, {})
    # samples/s: ranges relative to the median 10/105, 4/202, 0 -> median 0.0198
    assert tol["w"]["samples_per_s"] == pytest.approx(4 / 202)
    assert tol["w"]["tail_loss"] == pytest.approx(0.1)  # ranges 0.2, 0.1, 0
    assert tol["w"]["trial_memory_bytes"] == 0.0  # no resolution given


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_figures_png_and_svg(report):
    names = [f.name for f in report.figures]
    assert names == [
        "loss_curves",
        "throughput",
        "memory",
        "steps_to_target",
        "time_to_target",
        "pareto",
    ]  # "oom" only where bench oom probes are present
    for f in report.figures:
        w, h = png_size(f.png)
        assert 600 <= w <= 1200 and 250 <= h <= 1400, (f.name, w, h)
        assert len(f.png) < 400_000  # small enough to commit for the README
        assert f.svg.lstrip().startswith(b"<?xml") and b"<svg" in f.svg


def test_html_is_self_contained(report):
    page = report.html
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)
    assert not re.search(r"https?://", page.replace("http-equiv", ""))
    assert page.count('src="data:image/png;base64,') == len(report.figures)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)


def test_write_report_files(report, tmp_path):
    written = write_report(report, tmp_path / "out")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert "index.html" in names and "report.md" in names
    assert "figures/loss_curves.png" in names and "figures/loss_curves.svg" in names
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_bin_means_downsample_exactly():
    steps = pd.DataFrame(
        {
            "trial_key": ["a"] * 10 + ["b"] * 3,
            "step": list(range(1, 11)) + [1, 2, 3],
            "samples_seen": list(range(1, 11)) + [1, 2, 3],
            "time_s": list(range(1, 11)) + [1, 2, 3],
            "loss": [float(i) for i in range(10)] + [7.0, 8.0, 9.0],
        }
    )
    b = curves.bin_means(steps, points=5)
    a = b[b["trial_key"] == "a"]
    # geometric bins floor(5 log(1+pos) / log(11)): {0} {1} {2,3} {4,5} {6..9}
    assert list(a["loss"]) == [0.0, 1.0, 2.5, 4.5, 7.5]
    assert list(a["step"]) == [1.0, 2.0, 3.5, 5.5, 8.5]
    assert list(b[b["trial_key"] == "b"]["loss"]) == [7.0, 8.0, 9.0]  # short run kept whole


def test_loss_band_only_where_every_seed_ran():
    """Three seeds, two stop at step 30 (diverged / stopped early): the mean of the one
    left would pass for the configuration's mean, with a band of zero width."""
    steps = np.arange(1.0, 101.0)
    binned = pd.concat(
        [
            pd.DataFrame(
                {
                    "trial_key": key,
                    "step": steps[:n],
                    "samples_seen": steps[:n],
                    "time_s": steps[:n],
                    "loss": level - steps[:n] / 1000,  # linear: interpolation is exact
                }
            )
            for key, n, level in (("a", 100, 1.0), ("b", 30, 2.0), ("c", 30, 3.0))
        ]
    )
    trials = pd.DataFrame({"trial_key": ["a", "b", "c"], "config_id": ["cfg"] * 3})
    bands, partial = curves.config_bands(binned, trials, "step")
    full = bands["x"] <= 30
    assert full.any() and (~full).any()
    assert (bands.loc[full, "n"] == 3).all() and (bands.loc[~full, "n"] == 1).all()
    # Mean and band where all three ran; nothing beyond.
    np.testing.assert_allclose(bands.loc[full, "mean"], 2.0 - bands.loc[full, "x"] / 1000)
    assert (bands.loc[full, "hi"] - bands.loc[full, "lo"] > 1.9).all()
    assert bands.loc[~full, ["mean", "lo", "hi"]].isna().all().all()
    # Beyond, the surviving seed on its own, from the last point with all three on.
    assert set(partial["trial_key"]) == {"a"}
    drawn = partial.dropna(subset=["loss"])  # NaN elsewhere: breaks in the line
    assert drawn["x"].min() == bands.loc[full, "x"].max()
    assert drawn["x"].max() == 100
    np.testing.assert_allclose(drawn["loss"], 1.0 - drawn["x"] / 1000)


def test_oom_probes_drawn_and_tolerated(tmp_path, sweep):
    import pyarrow as pa

    root = tmp_path / "results"
    folder = root / "s"
    write_synthetic(folder, Synthetic(shapes=((4, 1), (16, 1), (64, 1)), seeds=(0,), oom_above=16))
    probes = pa.table(
        {
            "workload": ["seed-mlp"] * 4,
            "micro_batch_size": [8, 16, 32, 64],
            "capacity_bytes": [2**30] * 4,
            "outcome": ["ok", "ok", "oom", "oom"],
            "peak_reserved_bytes": [400 * 2**20, 500 * 2**20, None, None],
        }
    )
    write_atomic(probes, root / "oom" / "seed-mlp" / "probes.parquet")
    (root / "oom" / "bad").mkdir(parents=True)
    (root / "oom" / "bad" / "probes.parquet").write_bytes(b"not parquet")
    rep = build_report(folder)
    assert "memory" in [f.name for f in rep.figures]
    assert any("unreadable" in n for n in rep.notes)

    from bench.report.figures import load_oom_probes

    p = load_oom_probes(folder, [])
    assert sorted(p.loc[p["outcome"] == "oom", "micro_batch_size"]) == [32, 64]


def write_oom_searches(folder: Path) -> None:
    """bench oom's probes for two precisions at caps of 1 and 2 GiB, 10 % margin, and
    throughput probes for --target-batch 64 under the 1 GiB cap after the margin. fp32
    fits b <= cap / 100 MiB, bf16 twice that."""
    import pyarrow as pa

    mib, rows = 2**20, []
    for precision, per_b in (("fp32", 100 * mib), ("bf16", 50 * mib)):
        for cap in (2**30, 2 * 2**30, int(0.9 * 2**30)):
            fits = cap // per_b
            for b in sorted({1, 2, 4, 8, 16, 32, 64, fits, fits + 1}):
                rows.append(
                    {
                        "search_key": f"{precision}-{cap}",
                        "kind": "boundary",
                        "workload": "seed-mlp",
                        "precision": precision,
                        "micro_batch_size": b,
                        "accumulation_steps": 1,
                        "capacity_bytes": cap,
                        "outcome": "ok" if b <= fits else "oom",
                        "peak_reserved_bytes": b * per_b if b <= fits else None,
                        "samples_per_s": None,  # from_pylist takes the first row's keys
                        "config_json": json.dumps({"optimizer": "adamw"}),
                    }
                )
        for b, speed in ((4, 900.0), (8, 1500.0), (16, 1200.0)):
            if b * per_b <= 0.9 * 2**30:
                rows.append({**rows[-1], "kind": "throughput", "micro_batch_size": b,
                             "accumulation_steps": 64 // b, "capacity_bytes": int(0.9 * 2**30),
                             "outcome": "ok", "samples_per_s": speed, "peak_reserved_bytes": b * per_b})  # fmt: skip
    write_atomic(pa.Table.from_pylist(rows), folder / "probes.parquet")


def test_oom_figure_boundary_against_capacity_and_the_planner_choice(oom_report):
    figures = dict(drawn(oom_report))
    assert "oom" in figures
    ax = figures["oom"].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if len(ln.get_xdata())}
    assert sorted(lines) == ["b* bf16 adamw", "b* fp32 adamw"]
    fp32 = lines["b* fp32 adamw"]
    caps = [0.9 * 2**30, 2**30, 2 * 2**30]
    assert list(fp32.get_xdata()) == pytest.approx(caps, rel=1e-6)
    assert list(fp32.get_ydata()) == [9, 10, 20]  # floor(cap / 100 MiB)
    assert list(lines["b* bf16 adamw"].get_ydata()) == [18, 20, 40]
    from bench.report.figures import load_oom_probes, planner_choices

    choice = planner_choices(load_oom_probes(oom_report.folder, []))
    # fp32 at 0.9 GiB fits b <= 9: of 4 and 8, 8 x 8 is the faster; bf16 also has 16.
    assert choice.set_index("group")["micro_batch_size"].to_dict() == {
        "fp32 adamw": 8,
        "bf16 adamw": 8,
    }
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "planner fp32 adamw at 922 MiB: 8×8, 1,500/s" in labels


def test_oom_probes_of_different_searches_are_kept_apart(tmp_path):
    """fp32 and bf16 searches in one probes.parquet (bench oom appends to it): each has
    its own boundary. Merged, fp32's OOM at 101 made 'OOM from b=101' while bf16 ran
    b=200 fine."""
    import pyarrow as pa

    from bench.oom import PROBE_COLUMNS, peak_bytes
    from bench.report.figures import load_oom_probes, probe_boundaries

    mib = 2**20
    rows = []
    for precision, search, outcomes in (
        ("fp32", "s-fp32", {50: "ok", 100: "ok", 101: "oom"}),
        ("bf16", "s-bf16", {100: "ok", 200: "ok", 202: "oom", 201: "killed"}),
    ):
        for b, outcome in outcomes.items():
            rows.append(
                {
                    "search_key": search,
                    "workload": "seed-mlp",
                    "precision": precision,
                    "device": "cuda:0",
                    "micro_batch_size": b,
                    "capacity_bytes": 2**30,
                    "baseline_bytes": 500 * mib,  # the CUDA context, outside the allocator
                    "outcome": "oom" if outcome == "killed" else outcome,
                    "killed": outcome == "killed",
                    "peak_reserved_bytes": 4 * b * mib if outcome == "ok" else None,
                    "config_json": json.dumps({"optimizer": "adamw", "precision": precision}),
                }
            )
    table = pd.DataFrame(rows)
    assert set(table.columns) <= set(PROBE_COLUMNS)
    write_atomic(pa.Table.from_pandas(table), tmp_path / "probes.parquet")

    p = load_oom_probes(tmp_path, [])
    # The peak bench oom itself compares with the capacity: context + reserved.
    ok = p[p["outcome"] == "ok"].set_index("micro_batch_size")["peak_bytes"]
    assert ok.loc[200] == 500 * mib + 800 * mib == peak_bytes(rows[4])
    assert (p["outcome"] == "killed").sum() == 1

    lines = probe_boundaries(p).set_index("label")
    assert sorted(lines.index) == ["1 GiB bf16 adamw", "1 GiB fp32 adamw"]
    fp32, bf16 = lines.loc["1 GiB fp32 adamw"], lines.loc["1 GiB bf16 adamw"]
    assert (fp32["first_bad"], fp32["bad_outcome"], fp32["last_ok"]) == (101, "oom", 100)
    # bf16's first failure was a kill from outside, not the cap: said as such.
    assert (bf16["first_bad"], bf16["bad_outcome"], bf16["last_ok"]) == (201, "killed", 200)

    # Without search_key (older files): one line per (workload, precision, capacity).
    write_atomic(
        pa.Table.from_pandas(table.drop(columns=["search_key"])), tmp_path / "probes.parquet"
    )
    lines = probe_boundaries(load_oom_probes(tmp_path, []))
    assert sorted(lines["first_bad"]) == [101, 201]


def test_probes_are_read_by_probe_record_names_not_guessed(tmp_path):
    """A file whose columns are not ProbeRecord's (``b``, ``fits``) is skipped with a
    note; a file of an older version (started_at as text, columns missing) still reads."""
    import pyarrow as pa

    from bench.report.figures import load_oom_probes

    guessed = pa.table({"b": [8, 16], "fits": ["passed", "oom"]})
    write_atomic(guessed, tmp_path / "probes.parquet")
    notes: list[str] = []
    assert load_oom_probes(tmp_path, notes) is None
    assert any("no probe with a micro-batch and an outcome" in n for n in notes)

    older = pa.table(
        {
            "probe_key": ["a", "b", "a"],  # "a" measured again: its newer row wins
            "micro_batch_size": [8, 16, 8],
            "outcome": ["oom", "oom", "ok"],
            "capacity_bytes": [2**30] * 3,
            "started_at": ["2026-11-29T00:00:00+00:00"] * 3,
        }
    )
    write_atomic(older, tmp_path / "probes.parquet")
    p = load_oom_probes(tmp_path, notes)
    assert sorted(zip(p["micro_batch_size"], p["outcome"], strict=True)) == [
        (8, "ok"),
        (16, "oom"),
    ]


def test_the_report_reads_only_declared_columns():
    from bench import records
    from bench.report import figures, memory
    from bench.report import prepare as prep

    trial_columns = records.columns(records.TrialRecord)
    step_columns = records.columns(records.StepRecord)
    for names in (
        prep.CONFIG_COLUMNS,
        prep.TRIAL_NUMERIC,
        memory.READINGS,
        figures.MEMORY_SERIES,
    ):
        assert set(names) <= set(trial_columns), set(names) - set(trial_columns)
    assert set(prep.STEP_KEEP) <= set(step_columns)


# -- any results folder ------------------------------------------------------------------------


def test_trials_only_and_old_schema(tmp_path):
    """No steps table, no config_json, schema_version 0, most columns absent."""
    rows = [
        {
            "trial_key": f"k{s}{b}",
            "workload": "w",
            "mode": "mbgd",
            "micro_batch_size": b,
            "accumulation_steps": 1,
            "seed": s,
            "status": "ok",
            "samples_per_s": 100.0 * b,
            "cpu_peak_rss_bytes": 2**20 * b,
            "final_loss": 1.0 / b,
            "schema_version": 0,
        }
        for s in (0, 1)
        for b in (1, 2, 4)
    ]
    import pyarrow as pa

    write_atomic(pa.Table.from_pylist(rows), tmp_path / "trials" / "all.parquet")
    rep = build_report(tmp_path)
    assert len(rep.summary) == 3
    assert [f.name for f in rep.figures] == ["throughput", "memory", "pareto"]
    assert any("no steps table" in n for n in rep.notes)
    assert_tables_parse(rep.markdown, 3)


def test_single_run_folder(tmp_path, sweep):
    """`bench run` layout: trial.parquet + steps.parquet."""
    res = load_results(sweep)
    key = res.trials["trial_key"].iloc[0]
    write_atomic(
        trials_table(res.trials[res.trials["trial_key"] == key].to_dict("records")),
        tmp_path / "trial.parquet",
    )
    import pyarrow as pa

    write_atomic(
        pa.Table.from_pandas(res.steps[res.steps["trial_key"] == key], preserve_index=False),
        tmp_path / "steps.parquet",
    )
    rep = build_report(tmp_path)
    assert len(rep.summary) == 1 and "loss_curves" in [f.name for f in rep.figures]


def test_newest_sweep(tmp_path):
    root = tmp_path / "results"
    for name, mtime in (("old", 1_000), ("new", 2_000)):
        (root / name / "trials").mkdir(parents=True)
        os.utime(root / name / "trials", (mtime, mtime))
    (root / "oom").mkdir()  # no trials/: not a sweep
    assert newest_sweep(root).name == "new"
    with pytest.raises(BenchError):
        newest_sweep(tmp_path / "nothing")


# -- command line --------------------------------------------------------------------------------


def test_cli_report_default_folder(tmp_path, sweep):
    import shutil

    shutil.copytree(sweep, tmp_path / "results" / "only", ignore=shutil.ignore_patterns("report"))
    r = run_cli("report", "--target-loss", "0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "B_crit" in r.stdout
    out = tmp_path / "results" / "only" / "report"
    assert (out / "index.html").is_file() and (out / "report.md").is_file()
    assert len(list((out / "figures").glob("*.png"))) == 6


def test_cli_report_a_folder_of_sweeps_reports_each(tmp_path, sweep):
    import shutil

    root = tmp_path / "results"
    for name in ("seed", "smoke"):
        shutil.copytree(sweep, root / name, ignore=shutil.ignore_patterns("report"))
    (root / "oom" / "s1").mkdir(parents=True)  # bench oom's folder: no trials, not a sweep
    r = run_cli("report", str(root), "--target-loss", "0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == f"{root}: 2 sweeps (seed, smoke), a report for each"
    for name, line in zip(("seed", "smoke"), lines[1:], strict=True):
        assert line.startswith(f"report: {root / name / 'report' / 'index.html'} (")
        assert (root / name / "report" / "report.md").is_file()
    assert not (root / "report").exists() and not (root / "oom" / "report").exists()
    # --out: one folder per sweep under it.
    r = run_cli("report", str(root), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/index.html")) == [
        "seed",
        "smoke",
    ]


def test_cli_report_a_bad_sweep_among_several_does_not_stop_the_others(tmp_path, sweep):
    import shutil

    root = tmp_path / "results"
    shutil.copytree(sweep, root / "good", ignore=shutil.ignore_patterns("report"))
    shutil.move(_corrupt(tmp_path), root / "bad")
    r = run_cli("report", str(root), cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "1 of 2 sweeps not reported: bad:" in line and "corrupted parquet" in line, line
    assert (root / "good" / "report" / "index.html").is_file()
    assert not (root / "bad" / "report").exists()


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ({}, "the folder is empty"),
        ({"trials": None}, "trials/ with no rows yet"),
        (
            {"oom/s1/probes.parquet": b"", "seed/trials": None},
            "oom/ (bench oom probes), seed/ (a sweep with no trial rows yet)",
        ),
        ({"notes.txt": b"x"}, "it holds notes.txt"),
        ({"red\x1b[31m": b"x"}, "it holds red\\x1b[31m"),  # shown, not obeyed
    ],
)
def test_cli_report_says_what_a_folder_without_results_holds(tmp_path, layout, needle):
    root = tmp_path / "results"
    root.mkdir()
    for rel, data in layout.items():
        path = root / rel
        if data is None:
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    r = run_cli("report", str(root), cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert f"no results in {root}: " in line and needle in line, line


def _corrupt(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt"
    write_synthetic(folder, Synthetic(shapes=((4, 1),), seeds=(0,)))
    victim = next((folder / "trials").glob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[:40])
    return folder


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "no results folder"),
        ("empty", "empty"),
        ("corrupt", "corrupted parquet"),
        ("nan-target", "finite"),
        ("no-results-root", "no results folder"),
    ],
)
def test_cli_report_bad_input(tmp_path, case, needle):
    args = {
        "missing": [str(tmp_path / "nope")],
        "empty": [str(tmp_path)],
        "corrupt": [str(_corrupt(tmp_path)) if case == "corrupt" else ""],
        "nan-target": [str(tmp_path), "--target-loss", "nan"],
        "no-results-root": [],
    }[case]
    if case == "nan-target":
        write_synthetic(tmp_path, Synthetic(shapes=((4, 1),), seeds=(0,)))
    r = run_cli("report", *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("report.md"))  # nothing half-written


def test_summary_json_free_of_numpy(report):
    from bench.report.build import summary_numbers

    json.dumps(summary_numbers(report))
