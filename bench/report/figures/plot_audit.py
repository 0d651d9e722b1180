"""The accumulation audit's figure (``bench audit``): how far (b, k) ends from (b·k, 1)
at the same seed, next to how far two seeds of (b·k, 1) end apart.

Left: the relative parameter distance per variant, one point per (b, k) and seed, the
seed-to-seed distance as a black bar. Middle: the same for the mean |Δ training loss|
over the steps. Right: the running mean of |Δ training loss| over the steps (one
batch's loss is noisy; its running mean is readable) for the variants whose gap is
above rounding, at their largest k, the seed-to-seed curve dashed. Distances of exactly 0 sit on the
axis's floor (``FLOOR``): fp64 rounding is ~1e-16.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.figures.axes import legend_outside, new_figure, plain, setup_theme

FLOOR = 1e-17  # where an exact 0 is drawn on a log axis
ROUNDING = 1e-12  # gaps at or below this are fp64 arithmetic, not the model


def audit_figure(rows: pd.DataFrame, steps: pd.DataFrame):
    sns = setup_theme()
    variants = list(pd.unique(rows["variant"]))
    fig, axes = new_figure(1, 3, height=max(3.0, 0.32 * len(variants) + 1.4), width=15.0)
    ks = sorted(rows.loc[rows["kind"] == "accumulation", "accumulation_steps"].unique())
    colors = dict(zip(ks, sns.color_palette("deep", len(ks)), strict=True))
    for ax, column, title in (
        (axes[0, 0], "param_distance_rel", "‖θ_a − θ_b‖ / ‖θ_b‖ at the end"),
        (axes[0, 1], "train_loss_diff_mean", "mean |Δ training loss| over the steps"),
    ):
        _dot_panel(ax, rows, variants, column, colors)
        ax.set_title(title, fontsize=9)
    axes[0, 1].set_yticklabels([])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7)
    _curves(axes[0, 2], rows, steps, sns)
    fig.suptitle(
        "Accumulation audit: (b, k) against (b·k, 1) at the same seed (coloured), "
        "two seeds of (b·k, 1) (black bars); fp64 rounding is ~1e-16"
    )
    return fig


def _dot_panel(ax, rows: pd.DataFrame, variants: list, column: str, colors: dict) -> None:
    y = {v: i for i, v in enumerate(variants)}
    acc = rows[rows["kind"] == "accumulation"]
    for k, color in colors.items():
        part = acc[acc["accumulation_steps"] == k]
        jitter = (list(colors).index(k) - (len(colors) - 1) / 2) * 0.12
        ax.scatter(
            np.maximum(part[column].astype(float), FLOOR),
            part["variant"].map(y) + jitter,
            color=color, s=18, zorder=3, label=f"k = {k} vs (b·k, 1)",
        )  # fmt: skip
    seeds = rows[rows["kind"] == "seed"]
    ax.scatter(
        np.maximum(seeds[column].astype(float), FLOOR),
        seeds["variant"].map(y),
        marker="|", s=160, color="black", zorder=4, label="two seeds of (b·k, 1)",
    )  # fmt: skip
    ax.axvline(ROUNDING, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yticks(range(len(variants)), [plain(v) for v in variants], fontsize=7)
    ax.set_ylim(len(variants) - 0.5, -0.5)


def _curves(ax, rows: pd.DataFrame, steps: pd.DataFrame, sns) -> None:
    """Running mean of |Δ training loss| (median over seeds), largest k of each variant
    whose gap is above rounding; its seed-to-seed curve dashed in the same colour."""
    acc = rows[rows["kind"] == "accumulation"]
    gapped = acc.groupby("variant", sort=False)["param_distance_rel"].median()
    shown = [v for v, gap in gapped.items() if gap > ROUNDING]
    palette = dict(zip(shown, sns.color_palette("husl", max(1, len(shown))), strict=False))
    for variant in shown:
        s = steps[steps["variant"] == variant]
        k = s.loc[s["kind"] == "accumulation", "accumulation_steps"].max()
        a = s[(s["kind"] == "accumulation") & (s["accumulation_steps"] == k)]
        b = a["micro_batch_size"].iloc[0]
        noise = s[(s["kind"] == "seed") & (s["micro_batch_size"] == b * k)]
        for part, style, label in ((a, "-", f"(b={b}, k={k})"), (noise, "--", "seeds")):
            curve = part.groupby("step")["train_loss_abs_diff"].median().expanding().mean()
            ax.plot(
                curve.index, np.maximum(curve.to_numpy(), FLOOR), ls=style, lw=1.0,
                color=palette[variant], label=plain(f"{variant} {label}"),
            )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_title("running mean of |Δ training loss| (median over seeds)", fontsize=9)
    if shown:
        legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "no variant above rounding", ha="center", transform=ax.transAxes)
