"""The accumulation audit (bench.audit): where (b, k) is not (b·k, 1), checked in fp64
against a hand-written loop, and the `bench audit` command end to end."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bench import audit
from bench.config import TrialConfig
from bench.workloads import build_workload

N, WIDTH, LR, MOMENTUM, EPOCHS = 64, 16, 0.1, 0.9, 2


def config(b: int, k: int, seed: int = 0, workload="teacher-mlp", **options) -> TrialConfig:
    return TrialConfig(
        workload=workload,
        workload_options={"width": WIDTH, "val_samples": 32, **options},
        samples=N,
        batch_size=b,
        accumulation_steps=k,
        epochs=EPOCHS,
        optimizer="sgd",
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=0.0,
        precision="fp64",
        eval_every=0,
        seed=seed,
        device="cpu",
    )


def hand_written(b: int, k: int, seed: int = 0, **options) -> torch.nn.Module:
    """Accumulation as its users write it, in fp64, BatchNorm in training mode: a seeded
    permutation per epoch, k micro-batches of b, each summed loss over b·k, one step."""
    workload = build_workload("teacher-mlp", samples=N, options={"width": WIDTH, **options})
    torch.manual_seed(seed)
    model = workload.make_model().double().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = workload.train[0].double(), workload.train[1]
    order_generator = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        order = torch.randperm(N, generator=order_generator)
        for start in range(0, N, b * k):
            for m in range(k):
                index = order[start + m * b : start + (m + 1) * b]
                loss = torch.nn.functional.cross_entropy(model(x[index]), y[index], reduction="sum")
                (loss / (b * k)).backward()
            optimizer.step()
            optimizer.zero_grad()
    return model


def test_batchnorm_accumulation_equals_the_hand_written_loop_and_not_the_big_batch():
    bench_84 = audit.run_config(config(8, 4, norm="batch"))
    reference = hand_written(8, 4, norm="batch")
    assert audit.relative_distance(bench_84.params, audit.flat(reference.parameters())) < 1e-12
    statistics = audit.flat(b for b in reference.buffers() if b.is_floating_point())
    assert audit.relative_distance(bench_84.buffers, statistics) < 1e-12
    assert int(reference[1].num_batches_tracked) == EPOCHS * N // 8  # once per micro-batch
    # Normalised over 8 samples, not 32, and running statistics updated 4 times a step.
    bench_32 = audit.run_config(config(32, 1, norm="batch"))
    reference_32 = hand_written(32, 1, norm="batch")
    assert audit.relative_distance(bench_32.params, audit.flat(reference_32.parameters())) < 1e-12
    assert int(reference_32[1].num_batches_tracked) == EPOCHS * N // 32
    assert audit.relative_distance(bench_84.params, bench_32.params) > 1e-6
    assert audit.relative_distance(bench_84.buffers, bench_32.buffers) > 1e-6
    assert bench_84.layers == "BatchNorm1d×2"


@pytest.mark.parametrize(
    "options",
    [
        {"norm": "none"},
        {"norm": "layer"},
        {"norm": "ghost"},  # slices of 8: the same slices in (8, 4) and in (32, 1)
        {"norm": "batch-eval"},  # running statistics, never updated
        {"depth": 1, "dropout": 0.3},  # one dropout layer: its masks are drawn in one order
    ],
)
def test_per_sample_models_accumulate_exactly_in_fp64(options):
    small = audit.run_config(config(8, 4, **options))
    large = audit.run_config(config(32, 1, **options))
    assert audit.relative_distance(small.params, large.params) < 1e-12
    if small.buffers is not None:
        assert audit.relative_distance(small.buffers, large.buffers) < 1e-12
    assert audit.loss_differences(small.losses, large.losses).max() < 1e-12


def test_two_dropout_layers_draw_their_masks_in_another_order():
    # (32, 1): layer 1's 32 masks, then layer 2's; (8, 4): 8 of layer 1, 8 of layer 2, ...
    options = {"depth": 2, "dropout": 0.3}
    small = audit.run_config(config(8, 4, **options))
    large = audit.run_config(config(32, 1, **options))
    assert audit.relative_distance(small.params, large.params) > 1e-6
    assert small.layers == "Dropout×2"


def test_resnet_batchnorm_gaps_and_groupnorm_does_not():
    built: dict = {}  # each norm's data drawn once

    def run(b, k, norm):
        c = config(b, k, workload="resnet", norm=norm).replace(
            workload_options={"width": 4, "val_samples": 8, "norm": norm}, samples=32, epochs=1
        )
        return audit.run_config(c, built)

    assert audit.relative_distance(run(8, 2, "batch").params, run(16, 1, "batch").params) > 1e-6
    grouped = audit.relative_distance(run(8, 2, "group").params, run(16, 1, "group").params)
    assert grouped < 1e-12


def test_pairs_match_each_split_with_its_big_batch_and_seeds_with_the_next_seed():
    configs = [config(b, k, seed, norm=n) for n in ("none", "batch") for seed in (0, 1)
               for b, k in ((16, 1), (8, 2), (4, 4))]  # fmt: skip
    configs.append(config(4, 2, 0, norm="none"))  # its (8, 1) is not in the spec
    found, missing = audit.pairs(configs)
    accumulation = [p for p in found if p.kind == "accumulation"]
    assert len(accumulation) == 2 * 2 * 2
    for p in accumulation:
        assert p.b.accumulation_steps == 1 and p.a.seed == p.b.seed
        assert p.b.batch_size == p.a.batch_size * p.a.accumulation_steps
        assert p.a.workload_options == p.b.workload_options
    seeds = [(p.b.seed, p.a.seed) for p in found if p.kind == "seed"]
    assert seeds == [(0, 1), (0, 1)]
    assert missing == ["b=4 k=2 seed=0: no b=8 k=1 at that seed"]
    labels = audit.variant_labels(configs)
    assert sorted(set(labels.values())) == ["teacher-mlp: norm=batch", "teacher-mlp: norm=none"]
    # Each workload's variants are told apart by what varies among them alone.
    resnets = [config(8, 1, workload="resnet", norm=n).replace(workload_options={"norm": n})
               for n in ("batch", "group")]  # fmt: skip
    labels = audit.variant_labels(configs + resnets)
    assert sorted(set(labels.values())) == [
        "resnet: norm=batch", "resnet: norm=group",
        "teacher-mlp: norm=batch", "teacher-mlp: norm=none",
    ]  # fmt: skip


SPEC = """# Does (b, k) train like (b*k, 1) with BatchNorm?
name = "tiny-audit"
device = "cpu"
seeds = [0, 1]

[workload]
name = "teacher-mlp"
options = { width = 8, val_samples = 16 }

[base]
samples = 32
lr = 0.1
precision = "fp64"
eval_every = 1

[budget]
epochs = 1

[grid]
"workload_options.norm" = ["none", "batch"]

[[cases]]
batch_size = 16
accumulation_steps = 1
[[cases]]
batch_size = 8
accumulation_steps = 2
"""


def test_bench_audit_writes_the_pairs_the_table_and_the_figure(tmp_path, capsys):
    from bench.cli import main

    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    assert main(["audit", str(spec), "--out", str(tmp_path / "out")]) == 0
    rows = pd.read_parquet(tmp_path / "out" / "audit.parquet")
    assert list(rows.columns) == list(audit.COLUMNS)
    acc = rows[rows["kind"] == "accumulation"].set_index(["variant", "seed"])
    assert acc.loc[("teacher-mlp: norm=none", 0), "param_distance_rel"] < 1e-12
    assert acc.loc[("teacher-mlp: norm=batch", 0), "param_distance_rel"] > 1e-6
    assert acc.loc[("teacher-mlp: norm=batch", 1), "val_loss_diff_max"] > 1e-6
    assert (rows["kind"] == "seed").sum() == 2  # one per variant: seeds 0 and 1 of (16, 1)
    steps = pd.read_parquet(tmp_path / "out" / "audit_steps.parquet")
    assert len(steps) == len(rows) * 2  # 32 samples / 16 = 2 steps per pair
    table = (tmp_path / "out" / "audit.md").read_text()
    assert "| teacher-mlp: norm=batch | BatchNorm1d×2 | 8 | 2 |" in table
    assert table.startswith("<!-- Does (b, k) train like (b*k, 1) with BatchNorm? -->\n")
    assert table.split("\n", 2)[2] in capsys.readouterr().out  # the table, printed
    assert (tmp_path / "out" / "audit.png").read_bytes().startswith(b"\x89PNG")


def test_bench_audit_without_pairs_is_one_line_and_exit_2(tmp_path, capsys):
    from bench.cli import main

    spec = tmp_path / "one.toml"
    spec.write_text(SPEC.replace("seeds = [0, 1]", "seeds = [0]").split("[[cases]]")[0]
                    + "[[cases]]\nbatch_size = 8\naccumulation_steps = 2\n")  # fmt: skip
    assert main(["audit", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no b=16 k=1 at that seed" in err[0]
    assert not (tmp_path / "out").exists()


def test_every_trial_row_says_which_layers_depend_on_the_batch():
    from bench.trial import run_trial

    row = run_trial(config(8, 2, norm="batch", dropout=0.1).replace(epochs=1)).trial
    assert row["batch_dependent_layers"] == "BatchNorm1d×2,Dropout×2"
    assert run_trial(config(8, 2).replace(epochs=1)).trial["batch_dependent_layers"] == ""
