"""resnet: a small ResNet with BatchNorm on synthetic, labelled 32×32 RGB images.

The network is CIFAR's ResNet (He et al. 2016, section 4.2): a 3×3 stem, three stages
of ``blocks`` BasicBlocks at ``width``, 2·width and 4·width channels (stride 2 between
stages, a 1×1 projection where the shape changes), global average pooling, a linear
head. It is written here rather than taken from torchvision or timm because their
wheels pin torch versions other than the one bench runs on (timm would pull torchvision
in too); and no weights are downloaded in either case.

The images: an 8×8×3 latent of N(0, 1) values, upsampled bilinearly to 32×32, plus
pixel noise; the label is a fixed random convolutional teacher's class for the latent
(as teacher-mlp, with ``label_noise`` of them replaced by random classes), so the loss falls and the
best reachable loss is above zero. Each stream (teacher, train, val) has a generator of
its own, so N samples are the first N of any larger N.

``norm`` picks the layer after every convolution (``bench.workloads.norms``): batch
(the default, the network as published), batch-eval, ghost or group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.workloads import declared
from bench.workloads.base import ClassificationWorkload, draw_rows, stream_generator
from bench.workloads.norms import channel_norm

IMAGE = 32
LATENT = 8
PIXEL_NOISE = 0.1


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm, plus the input (projected where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = channel_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = channel_norm(norm, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), channel_norm(norm, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def resnet(width: int, blocks: int, classes: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        channel_norm(norm, width),
        nn.ReLU(),
    ]
    cin = width
    for stage in range(3):
        cout = width * 2**stage
        for i in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if stage and not i else 1, norm))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


@declared.options_of(declared.resnet)
def build(**options: Any) -> ClassificationWorkload:
    checked = declared.resnet(**options)
    n, options = checked.n_train, checked.options
    val_samples, classes, width = options["val_samples"], options["classes"], options["width"]
    blocks, norm, label_noise = options["blocks"], options["norm"], options["label_noise"]
    data_seed = options["data_seed"]
    # The teacher: one random 3×3 filter per class over the latent, rectified and
    # averaged over positions; its largest response is the class. Translation-invariant,
    # as a convolutional network with global pooling can learn.
    g = stream_generator(data_seed, "teacher")
    filters = torch.randn(classes, 3, 3, 3, generator=g)
    filters = filters / filters.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # no class favoured

    def draw(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(rows, 3, LATENT, LATENT, generator=g)
        x = F.interpolate(z, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)
        x = x + PIXEL_NOISE * torch.randn(x.shape, generator=g)
        y = F.conv2d(z, filters, padding=1).relu().mean(dim=(2, 3)).argmax(dim=1)
        noisy = torch.rand(rows, generator=g) < label_noise
        return x, torch.where(noisy, torch.randint(0, classes, (rows,), generator=g), y)

    options = dict(
        val_samples=val_samples, classes=classes, width=width, blocks=blocks, norm=norm,
        label_noise=label_noise, data_seed=data_seed,
    )  # fmt: skip
    return ClassificationWorkload(
        name="resnet",
        train=draw_rows(n, data_seed, "train", draw),
        val=draw_rows(val_samples, data_seed, "val", draw),
        make_model=lambda: resnet(width, blocks, classes, norm),
        options=options,
    )
