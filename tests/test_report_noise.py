"""The report's gradient noise scale figure: B_simple over training beside the fitted B_crit."""

from __future__ import annotations

import pytest

from bench.report import build
from bench.report.build import build_report
from bench.report.synthetic import Synthetic, write_synthetic


def drawn(report) -> dict[str, object]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = dict(build.figure_objects(report))
    for fig in figures.values():
        FigureCanvasAgg(fig).draw()
    return figures


@pytest.fixture(scope="module")
def noise_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise") / "s"
    write_synthetic(folder, Synthetic(seeds=(0, 1), noise_scale_every=16))
    return build_report(folder, figures=False)


def test_noise_scale_figure_has_a_line_per_configuration_and_the_fitted_b_crit(noise_report):
    fit = noise_report.fits["seed-mlp"]
    assert fit.b_crit == pytest.approx(32.0, rel=0.2)
    fig = drawn(noise_report)["noise_scale"]
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    crit = [ln for ln in ax.get_lines() if ln.get_label().startswith("B_crit")]
    assert len(crit) == 1
    assert crit[0].get_label() == f"B_crit (steps-to-target fit) ≈ {fit.b_crit:.3g}"
    assert list(crit[0].get_ydata()) == pytest.approx([fit.b_crit] * 2)
    # Every configuration ran past step 16, so each has a line of its own.
    configs = len(noise_report.prep.configs)
    assert len(labels) == configs + 1
    planted = [ln for ln in ax.get_lines() if ln not in crit]
    for ln in planted:
        assert min(ln.get_ydata()) >= 16.0 - 1e-9 and max(ln.get_ydata()) <= 32.0 + 1e-9


def test_noise_scale_legend_sits_outside_the_axes(noise_report):
    fig = drawn(noise_report)["noise_scale"]
    renderer = fig.canvas.get_renderer()
    for legend in [*fig.legends, *(a.get_legend() for a in fig.axes if a.get_legend())]:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer))
        for text in legend.get_texts():
            assert len(text.get_text()) <= 60, text.get_text()


def test_noise_scale_figure_is_rendered_with_title_and_caption(noise_report):
    figures = build.render_figures(noise_report)
    f = next(f for f in figures if f.name == "noise_scale")
    assert f.title == "Gradient noise scale" and "B_crit" in f.caption
    assert f.png.startswith(b"\x89PNG")


def test_without_b_simple_the_figure_is_left_out_with_a_note(tmp_path):
    write_synthetic(tmp_path / "s", Synthetic(shapes=((4, 1), (16, 1), (64, 1)), seeds=(0,)))
    report = build_report(tmp_path / "s", figures=False)
    assert "noise_scale" not in drawn(report)
    assert any(n.startswith("gradient noise scale: no step") for n in report.notes)
