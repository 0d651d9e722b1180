"""One training configuration: frozen, keyword-only, validated when built.

Every error names the key, the value and what would be accepted. ``trial_key`` is the
content hash that identifies a configuration (seed included) across runs and machines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, did_you_mean, unknown
from bench.plan import MODES, PARTIAL_WINDOWS, Plan, make_plan

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("constant", "linear-warmup", "cosine", "step")
INTERVALS = ("step", "epoch")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
NORMALIZE = ("sample", "micro")
DATA_PATHS = ("tensor", "dataloader")


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    # what is trained
    workload: str = "seed-mlp"
    workload_options: Mapping[str, Any] = field(default_factory=dict)
    samples: int | None = None  # N; None = the workload's default training-set size
    # epoch / batch / step (see bench.plan)
    mode: str = "mbgd"
    batch_size: int | None = 32  # the micro-batch b
    accumulation_steps: int = 1
    epochs: int | None = 1
    max_steps: int | None = None
    drop_last: bool = False
    partial_window: str = "step"
    normalize: str = "sample"
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    scheduler: str = "constant"
    scheduler_interval: str = "step"
    warmup: int = 0  # scheduler intervals of linear warm-up (linear-warmup, cosine)
    step_size: int = 1  # step decay: intervals between decays
    gamma: float = 0.1  # step decay factor
    grad_clip: float | None = None
    # Global gradient norm every N optimizer steps (1: every step; 0: never). It costs one
    # foreach norm, ~15 us on seed-mlp's ~100 us CPU step, so it is sampled by default.
    grad_norm_every: int = 16
    # validation and early stopping
    eval_every: int | None = None  # optimizer steps; None = at the end of every epoch; 0 = never
    patience: int | None = None  # evaluations without improvement; None = never stop early
    min_delta: float = 0.0
    restore_best: bool = False
    # execution
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    data_path: str = "tensor"  # "dataloader": the tutorial's torch DataLoader path
    # measurement
    timing_warmup_steps: int = 3  # optimizer steps excluded from throughput
    flush_every: int = 64  # optimizer steps between host syncs for losses and timings
    time_limit_s: float | None = None
    peak_tflops: float | None = None  # override the device table for MFU

    def __post_init__(self) -> None:
        _validate(self)
        # TOML's ``lr = 1`` is an int, the CLI's ``--lr 1`` a float: one configuration
        # must have one trial_key, so every float field holds a float.
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if _is_int(value):
                object.__setattr__(self, name, float(value))

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "") -> TrialConfig:
        """Build from a plain mapping (TOML, CLI). Unknown keys get a 'did you mean'.
        ``where`` (a file name, say) prefixes every error message."""
        prefix = f"{where}: " if where else ""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise ConfigError(f"{prefix}unknown key {key!r}{did_you_mean(key, names)}")
        values = dict(values)
        if "workload_options" in values and not isinstance(values["workload_options"], Mapping):
            raise ConfigError(f"{prefix}workload_options must be a table of options")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> TrialConfig:
        return cls.from_mapping(read_toml(path), where=str(path))

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["workload_options"] = dict(sorted(self.workload_options.items()))
        return d

    def plan(self, samples: int) -> Plan:
        """The epoch / window / step plan of this configuration over ``samples`` (N)."""
        return make_plan(
            samples=samples,
            batch_size=self.batch_size,
            accumulation_steps=self.accumulation_steps,
            mode=self.mode,
            epochs=self.epochs,
            max_steps=self.max_steps,
            drop_last=self.drop_last,
            partial_window=self.partial_window,
        )

    @property
    def trial_key(self) -> str:
        """Content hash of the configuration, seed included (16 hex digits)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Resolved hints, not annotation strings: "float | None", "Optional[float]" alike.
FLOAT_FIELDS = tuple(
    name
    for name, hint in typing.get_type_hints(TrialConfig).items()
    if hint is float or (float in typing.get_args(hint) and int not in typing.get_args(hint))
)


def floats_as_floats(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the ints of float fields as floats (what TrialConfig stores), for
    config dicts written before it coerced them: 600 and 600.0 are one setting."""
    return {k: float(v) if k in FLOAT_FIELDS and _is_int(v) else v for k, v in values.items()}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; every failure becomes one ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate(c: TrialConfig) -> None:
    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{key} must be {what}, got {getattr(c, key)!r}")

    def choice(key: str, choices: tuple[str, ...]) -> None:
        value = getattr(c, key)
        if value not in choices:
            raise unknown(key, value, choices)

    need(isinstance(c.workload, str) and bool(c.workload), "workload", "a workload name")
    need(c.samples is None or (_is_int(c.samples) and c.samples >= 1), "samples", "an integer >= 1")
    choice("mode", MODES)
    need(
        c.batch_size is None or (_is_int(c.batch_size) and c.batch_size >= 1),
        "batch_size",
        "an integer >= 1",
    )
    need(
        _is_int(c.accumulation_steps) and c.accumulation_steps >= 1,
        "accumulation_steps",
        "an integer >= 1",
    )
    need(c.epochs is None or (_is_int(c.epochs) and c.epochs >= 1), "epochs", "an integer >= 1")
    need(
        c.max_steps is None or (_is_int(c.max_steps) and c.max_steps >= 1),
        "max_steps",
        "an integer >= 1",
    )
    if c.epochs is None and c.max_steps is None:
        raise ConfigError("give epochs or max_steps (or both: whichever ends first)")
    need(isinstance(c.drop_last, bool), "drop_last", "true or false")
    choice("partial_window", PARTIAL_WINDOWS)
    choice("normalize", NORMALIZE)
    choice("optimizer", OPTIMIZERS)
    need(_is_number(c.lr) and c.lr >= 0, "lr", "a number >= 0")
    need(_is_number(c.momentum) and 0 <= c.momentum < 1, "momentum", "a number in [0, 1)")
    need(_is_number(c.weight_decay) and c.weight_decay >= 0, "weight_decay", "a number >= 0")
    choice("scheduler", SCHEDULERS)
    choice("scheduler_interval", INTERVALS)
    need(_is_int(c.warmup) and c.warmup >= 0, "warmup", "an integer >= 0")
    need(_is_int(c.step_size) and c.step_size >= 1, "step_size", "an integer >= 1")
    need(_is_number(c.gamma) and c.gamma > 0, "gamma", "a number > 0")
    need(
        c.grad_clip is None or (_is_number(c.grad_clip) and c.grad_clip > 0),
        "grad_clip",
        "a number > 0",
    )
    need(
        c.eval_every is None or (_is_int(c.eval_every) and c.eval_every >= 0),
        "eval_every",
        "an integer >= 0 (0: never)",
    )
    need(
        c.patience is None or (_is_int(c.patience) and c.patience >= 1),
        "patience",
        "an integer >= 1",
    )
    if c.patience is not None and c.eval_every == 0:
        raise ConfigError("patience needs evaluations: eval_every is 0 (never)")
    need(_is_number(c.min_delta) and c.min_delta >= 0, "min_delta", "a number >= 0")
    need(isinstance(c.restore_best, bool), "restore_best", "true or false")
    if c.restore_best and c.eval_every == 0:
        raise ConfigError("restore_best needs evaluations: eval_every is 0 (never)")
    need(
        _is_int(c.grad_norm_every) and c.grad_norm_every >= 0,
        "grad_norm_every",
        "an integer >= 0 (0: never)",
    )
    choice("precision", PRECISIONS)
    need(_is_int(c.seed) and c.seed >= 0, "seed", "an integer >= 0")
    need(
        isinstance(c.device, str)
        and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", c.device) is not None,
        "device",
        "one of auto, cpu, cuda, cuda:N, mps",
    )
    choice("data_path", DATA_PATHS)
    need(
        _is_int(c.timing_warmup_steps) and c.timing_warmup_steps >= 0,
        "timing_warmup_steps",
        "an integer >= 0",
    )
    need(_is_int(c.flush_every) and c.flush_every >= 1, "flush_every", "an integer >= 1")
    need(
        c.time_limit_s is None or (_is_number(c.time_limit_s) and c.time_limit_s > 0),
        "time_limit_s",
        "a number > 0",
    )
    need(
        c.peak_tflops is None or (_is_number(c.peak_tflops) and c.peak_tflops > 0),
        "peak_tflops",
        "a number > 0",
    )
    for key in c.workload_options:
        if not isinstance(key, str):
            raise ConfigError(f"workload_options keys must be strings, got {key!r}")


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str | int, *, key: str = "size") -> int:
    """'16GiB' -> 17179869184; plain integers are bytes. Raises ConfigError naming ``key``."""
    if _is_int(text):
        value = int(text)
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"{key}: cannot read {text!r} as a size (e.g. 512MiB, 16GiB, 2.5GB)")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    if value <= 0:
        raise ConfigError(f"{key} must be > 0 bytes, got {text!r}")
    return value


def format_bytes(n: int | float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
