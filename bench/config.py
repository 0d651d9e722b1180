"""One training configuration: frozen, keyword-only, validated when built.

A pydantic dataclass: the field annotations are the validation (strict types, bounds,
choices) and, through ``python -m bench schema config``, the JSON Schema. Every error
is one line that names the key, the value and what would be accepted (see
:func:`bench.errors.validation_error`). ``trial_key`` is the content hash that
identifies a configuration (seed included) across runs and machines.
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
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Lt, MinLen
from pydantic import ConfigDict, StringConstraints, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from bench.errors import Accepts, ConfigError, validation_error
from bench.plan import MODES, PARTIAL_WINDOWS, Plan, make_plan

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("constant", "linear-warmup", "cosine", "step")
INTERVALS = ("step", "epoch")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
NORMALIZE = ("sample", "micro")
DATA_PATHS = ("tensor", "dataloader")


def integer(minimum: int, note: str = "") -> Any:
    """An int field (bools refused) of at least ``minimum``."""
    return Annotated[int, Ge(minimum), Accepts(f"an integer >= {minimum}{note}")]


def number(bound: str, *constraints: Any) -> Any:
    """A finite float field (ints taken as floats, bools refused); ``bound`` in words."""
    return Annotated[float, *constraints, Accepts(f"a number {bound}")]


WorkloadName = Annotated[str, MinLen(1), Accepts("a workload name")]
Options = Annotated[Mapping[str, Any], Accepts("a table of options")]
Device = Annotated[
    str,
    StringConstraints(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$"),
    Accepts("one of auto, cpu, cuda, cuda:N, mps"),
]
Flag = Annotated[bool, Accepts("true or false")]

# Strict: TOML's 1.5 is not an integer, "3" not a number, true not 1. Floats must be
# finite.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
# Attribute docstrings become the descriptions editors show from the schema (it reads
# the class's source: only for classes written out, not those made by create_model).
DOCUMENTED = ConfigDict(**STRICT, use_attribute_docstrings=True)


@dataclass(frozen=True, kw_only=True, config=DOCUMENTED)
class TrialConfig:
    """One training configuration (``bench run --config``, a sweep's trial)."""

    # what is trained
    workload: WorkloadName = "seed-mlp"
    """seed-mlp, teacher-mlp, char-lm, or module:function."""
    workload_options: Options = field(default_factory=dict)
    """Keyword options of the workload's factory."""
    samples: integer(1) | None = None
    """Training-set size N; none: the workload's default."""
    # epoch / batch / step (see bench.plan)
    mode: Literal[MODES] = "mbgd"
    """sgd: b = 1, bgd: b = N, mbgd: the given batch_size."""
    batch_size: integer(1) | None = 32
    """The micro-batch b."""
    accumulation_steps: integer(1) = 1
    """Micro-batches per optimizer step k."""
    epochs: integer(1) | None = 1
    max_steps: integer(1) | None = None
    """Stop after this many optimizer steps (with epochs: whichever ends first)."""
    drop_last: Flag = False
    """Drop the last incomplete micro-batch of an epoch."""
    partial_window: Literal[PARTIAL_WINDOWS] = "step"
    """A short accumulation window at the end of an epoch: step it or drop it."""
    normalize: Literal[NORMALIZE] = "sample"
    """Loss normalisation across a window: per sample or per micro-batch."""
    # optimisation
    optimizer: Literal[OPTIMIZERS] = "sgd"
    lr: number(">= 0", Ge(0)) = 0.01
    momentum: number("in [0, 1)", Ge(0), Lt(1)) = 0.0
    weight_decay: number(">= 0", Ge(0)) = 0.0
    scheduler: Literal[SCHEDULERS] = "constant"
    scheduler_interval: Literal[INTERVALS] = "step"
    warmup: integer(0) = 0
    """Scheduler intervals of linear warm-up (linear-warmup, cosine)."""
    step_size: integer(1) = 1
    """Step decay: intervals between decays."""
    gamma: number("> 0", Gt(0)) = 0.1
    """Step decay factor."""
    grad_clip: number("> 0", Gt(0)) | None = None
    # It costs one foreach norm, ~15 us on seed-mlp's ~100 us CPU step, so it is sampled.
    grad_norm_every: integer(0, " (0: never)") = 16
    """Global gradient norm every N optimizer steps (1: every step; 0: never)."""
    # validation and early stopping
    eval_every: integer(0, " (0: never)") | None = None
    """Optimizer steps between evaluations; none: at the end of every epoch; 0: never."""
    patience: integer(1) | None = None
    """Evaluations without improvement before stopping; none: never stop early."""
    min_delta: number(">= 0", Ge(0)) = 0.0
    restore_best: Flag = False
    # execution
    precision: Literal[PRECISIONS] = "fp32"
    seed: integer(0) = 0
    device: Device = "auto"
    data_path: Literal[DATA_PATHS] = "tensor"
    """tensor: batches sliced from device tensors; dataloader: the tutorial's DataLoader."""
    # measurement
    timing_warmup_steps: integer(0) = 3
    """Optimizer steps excluded from throughput."""
    flush_every: integer(1) = 64
    """Optimizer steps between host syncs for losses and timings."""
    time_limit_s: number("> 0", Gt(0)) | None = None
    peak_tflops: number("> 0", Gt(0)) | None = None
    """The device's peak for MFU (overrides the table)."""

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, values: Any, handler: Any) -> Any:
        # However it is built (keywords, replace, a mapping), a bad value is one line.
        try:
            return handler(values)
        except ValidationError as exc:
            raise validation_error(exc, cls) from None

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("give epochs or max_steps (or both: whichever ends first)")
        if self.patience is not None and self.eval_every == 0:
            raise ConfigError("patience needs evaluations: eval_every is 0 (never)")
        if self.restore_best and self.eval_every == 0:
            raise ConfigError("restore_best needs evaluations: eval_every is 0 (never)")

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "") -> TrialConfig:
        """Build from a plain mapping (TOML, CLI). Unknown keys get a 'did you mean'.
        ``where`` (a file name, say) prefixes every error message."""
        prefix = f"{where}: " if where else ""
        bad = next((k for k in values if not isinstance(k, str)), None)
        if bad is not None:
            raise ConfigError(f"{prefix}unknown key {bad!r}")
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
# Strict float fields take TOML's ``lr = 1`` as 1.0, so one configuration has one key.
FLOAT_FIELDS = tuple(
    name
    for name, hint in typing.get_type_hints(TrialConfig).items()
    if hint is float or (float in typing.get_args(hint) and int not in typing.get_args(hint))
)


def config_schema() -> dict[str, Any]:
    """JSON Schema of a TrialConfig table (``bench run --config``)."""
    from pydantic import TypeAdapter

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **TypeAdapter(TrialConfig).json_schema(),
    }


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
