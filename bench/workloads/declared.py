"""The built-in workloads' options, checked without torch: names, defaults, values, N.

A sweep's coordinator checks every point of a spec (the option names and values, the
training-set size N its plan needs, whether the data fits in this machine's memory) but
trains nothing. Building the workload for that would import torch (~1.3 s of CPU) and
draw the data, on the same cores where the forkserver is importing torch for the
workers. Each built-in's ``build`` takes its function's keywords here (its signature is
that function's, :func:`options_of`) and checks them through it, so each option and
each check exists once. A workload with no entry in
:data:`DECLARED` (char-lm, whose size depends on reading its corpus, or a user's
``module:function``) is built to be checked.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError
from bench.workloads.options import check_float, check_int

MLP_NORMS = ("none", "batch", "batch-eval", "ghost", "layer")
CONV_NORMS = ("batch", "batch-eval", "ghost", "group")

# Bytes of one row of each stream as the workloads draw it: float32 features (torch's
# default dtype) and an int64 label.
FLOAT32_BYTES, LABEL_BYTES = 4, 8
RESNET_IMAGE_VALUES = 3 * 32 * 32  # bench.workloads.resnet: 32x32 RGB


def check_norm(value, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ConfigError(
            f"workload option norm must be one of {', '.join(accepted)}, got {value!r}"
        )
    return value


def physical_memory_bytes() -> int | None:
    """This machine's RAM (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Checked:
    """A built-in workload's options after checking."""

    n_train: int
    options: dict[str, Any]  # every option but samples, checked (defaults filled in)
    row_bytes: int  # one training or validation row, features and label

    def streams(self) -> tuple[tuple[str, int], ...]:
        """(stream, rows) of the data the workload draws: one allocation each."""
        return (("train", self.n_train), ("val", self.options["val_samples"]))

    def too_large(self) -> str | None:
        """Why the data cannot be built in this machine's memory, or None. The same
        test as ``bench.workloads.base.check_fits``, stream by stream, before drawing."""
        from bench.config import format_bytes

        total = physical_memory_bytes()
        for stream, rows in self.streams():
            nbytes = rows * self.row_bytes
            if total is not None and nbytes > total:
                return (
                    f"{rows} {stream} rows take {format_bytes(nbytes)}, more than the "
                    f"{format_bytes(total)} of memory this machine has"
                )
        return None


def seed_mlp(
    *,
    samples: int | None = None,
    val_samples: int = 1000,
    data_seed: int = 0,
    step_slowdown: float | None = None,
    extra_memory_bytes: int = 0,
    loss_change: float | None = None,
) -> Checked:
    n = check_int("samples", 10_000 if samples is None else samples, 1)
    options = {
        "val_samples": check_int("val_samples", val_samples, 1),
        "data_seed": check_int("data_seed", data_seed, 0),
        "step_slowdown": None
        if step_slowdown is None
        else check_float("step_slowdown", step_slowdown, 0.0, 10.0),
        "extra_memory_bytes": check_int("extra_memory_bytes", extra_memory_bytes, 0, 2**50),
        "loss_change": None
        if loss_change is None
        else check_float("loss_change", loss_change, -0.99, 100.0),
    }
    return Checked(n, options, 10 * FLOAT32_BYTES + LABEL_BYTES)


def teacher_mlp(
    *,
    samples: int | None = None,
    val_samples: int = 2000,
    in_features: int = 32,
    classes: int = 10,
    width: int = 128,
    depth: int = 2,
    teacher_width: int = 64,
    label_noise: float = 0.1,
    dropout: float = 0.0,
    norm: str = "none",
    data_seed: int = 0,
) -> Checked:
    n = check_int("samples", 8192 if samples is None else samples, 1)
    options = {
        "val_samples": check_int("val_samples", val_samples, 1),
        "in_features": check_int("in_features", in_features, 1),
        "classes": check_int("classes", classes, 2),
        "width": check_int("width", width, 1),
        "depth": check_int("depth", depth, 1),
        "teacher_width": check_int("teacher_width", teacher_width, 1),
        "label_noise": check_float("label_noise", label_noise, 0.0, 1.0),
        "dropout": check_float("dropout", dropout, 0.0, 0.99),
        "norm": check_norm(norm, MLP_NORMS),
        "data_seed": check_int("data_seed", data_seed, 0),
    }
    return Checked(n, options, options["in_features"] * FLOAT32_BYTES + LABEL_BYTES)


def resnet(
    *,
    samples: int | None = None,
    val_samples: int = 512,
    classes: int = 10,
    width: int = 16,
    blocks: int = 1,
    norm: str = "batch",
    label_noise: float = 0.1,
    data_seed: int = 0,
) -> Checked:
    n = check_int("samples", 4096 if samples is None else samples, 1)
    options = {
        "val_samples": check_int("val_samples", val_samples, 1),
        "classes": check_int("classes", classes, 2),
        "width": check_int("width", width, 1),
        "blocks": check_int("blocks", blocks, 1),
        "norm": check_norm(norm, CONV_NORMS),
        "label_noise": check_float("label_noise", label_noise, 0.0, 1.0),
        "data_seed": check_int("data_seed", data_seed, 0),
    }
    return Checked(n, options, RESNET_IMAGE_VALUES * FLOAT32_BYTES + LABEL_BYTES)


def options_of(checker: Callable[..., Checked]) -> Callable[[Callable], Callable]:
    """Give a factory that takes ``**options`` its checker's keywords and defaults as its
    signature, what bench reads a workload's options from (bench.workloads)."""

    def mark(factory: Callable) -> Callable:
        signature = inspect.signature(checker)
        factory.__signature__ = signature.replace(return_annotation=inspect.Signature.empty)
        return factory

    return mark


# Built-in name -> its checker, whose keywords are its factory's (tests/test_workloads.py
# holds the two signatures equal).
DECLARED: dict[str, Callable[..., Checked]] = {
    "seed-mlp": seed_mlp,
    "teacher-mlp": teacher_mlp,
    "resnet": resnet,
}
