"""teacher-mlp: a learnable classification task whose size is a dial.

Labels come from a fixed random teacher network (argmax of its logits), with a fraction
``label_noise`` replaced by random classes, so the best reachable loss is known to be
above zero and SGD / MBGD / BGD really differ in how fast they get there. The student's
``width`` and ``depth`` set its memory footprint (activations grow with width x batch).

``norm`` (none, batch, batch-eval, ghost, layer: ``bench.workloads.norms``) puts a
normalisation layer before each hidden ReLU and ``dropout`` a dropout layer after it:
the layers that make k micro-batches of b train unlike one batch of b·k
(docs/notes/accumulation-audit.md). Their defaults (none, 0) build the plain MLP, with
the same initial weights as the MLP without those options.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.workloads import declared
from bench.workloads.base import ClassificationWorkload, draw_rows, mlp, stream_generator


@declared.options_of(declared.teacher_mlp)
def build(**options: Any) -> ClassificationWorkload:
    checked = declared.teacher_mlp(**options)
    n, options = checked.n_train, checked.options
    val_samples, in_features = options["val_samples"], options["in_features"]
    classes, width, depth = options["classes"], options["width"], options["depth"]
    teacher_width, label_noise = options["teacher_width"], options["label_noise"]
    dropout, norm, data_seed = options["dropout"], options["norm"], options["data_seed"]
    # The teacher: a fixed two-layer net, from a stream of its own (not from N).
    g = stream_generator(data_seed, "teacher")
    w1 = torch.randn(in_features, teacher_width, generator=g) / in_features**0.5
    w2 = torch.randn(teacher_width, classes, generator=g) / teacher_width**0.5

    def draw(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(rows, in_features, generator=g)
        y = (torch.tanh(x @ w1) @ w2).argmax(dim=1)
        noisy = torch.rand(rows, generator=g) < label_noise
        return x, torch.where(noisy, torch.randint(0, classes, (rows,), generator=g), y)

    train = draw_rows(n, data_seed, "train", draw)
    val = draw_rows(val_samples, data_seed, "val", draw)
    sizes = [in_features] + [width] * depth + [classes]
    return ClassificationWorkload(
        name="teacher-mlp",
        train=train,
        val=val,
        make_model=lambda: mlp(sizes, dropout=dropout, norm=norm),
        options={
            "val_samples": val_samples,
            "in_features": in_features,
            "classes": classes,
            "width": width,
            "depth": depth,
            "teacher_width": teacher_width,
            "label_noise": label_noise,
            "dropout": dropout,
            "norm": norm,
            "data_seed": data_seed,
        },
    )
