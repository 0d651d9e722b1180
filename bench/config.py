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

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import ConfigDict, StringConstraints, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from bench.errors import Accepts, ConfigError, validation_error
from bench.plan import MODES, PARTIAL_WINDOWS, Plan, default_epochs, make_plan

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("constant", "linear-warmup", "cosine", "step")
INTERVALS = ("step", "epoch")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
NORMALIZE = ("sample", "micro")
DATA_PATHS = ("tensor", "dataloader")
SYNCS = ("window", "every")
# Data-parallel keys a configuration leaves out of to_dict (and so of trial_key) while
# they hold these defaults: a 1-process configuration keeps the key it always had.
PARALLEL_DEFAULTS = {"nproc": None, "sync": "window"}
RESTORE_RULES = ("best", "last_improvement")
# torch.optim's default weight_decay per optimizer (torch 2.13; a test reads torch's
# signatures): what an unset weight_decay trains with.
TORCH_WEIGHT_DECAY = {"sgd": 0.0, "adamw": 0.01}


# Results hold every integer as int64 (bench.records): a larger one would pass, train,
# and then fail to be written, so integers are bounded where they are validated.
INT64_MAX = 2**63 - 1
INT64_TEXT = f"at most 2**63 - 1 = {INT64_MAX} (results hold integers as int64)"
# The largest finite float32: the bound of settings compared with float32 tensors
# (gradient norms, losses), where no other bound is natural.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TEXT = f"at most {FLOAT32_MAX:.4g} (the largest float32)"


def integer(minimum: int, note: str = "", *, maximum: int = INT64_MAX, above: str = "") -> Any:
    """An int field (bools refused) in [``minimum``, ``maximum``]; ``above``: what a
    larger value is told (default: the int64 bound)."""
    above = above or (INT64_TEXT if maximum == INT64_MAX else f"at most {maximum}")
    return Annotated[
        int, Ge(minimum), Le(maximum), Accepts(f"an integer >= {minimum}{note}", above=above)
    ]


def number(bound: str, *constraints: Any, above: str = "") -> Any:
    """A finite float field (ints taken as floats, bools refused); ``bound`` in words,
    ``above``: what a value past its upper bound is told."""
    return Annotated[float, *constraints, Accepts(f"a number {bound}", above=above)]


# Upper bounds of the float settings, each in a sane range. An lr or weight decay of
# 1e300 does not fit the float32 parameters it multiplies: every optimizer step would
# fail ("value cannot be converted to type float without overflow"). An lr of 1e12 diverges
# within steps (seed-mlp: a non-finite loss at step 3), what divergence tests want; a
# weight decay of 1000 is past any that trains. lr x weight_decay stays below 1e15, far
# inside float32 (3.4e38), so every update converts.
LR_MAX = 1e12
WEIGHT_DECAY_MAX = 1000.0
# A decay factor above 1 grows the lr geometrically: gamma ** t overflows a float.
GAMMA_MAX = 1.0
TIME_LIMIT_MAX_S = 365 * 24 * 3600.0  # a year: a longer per-trial limit is a typo
PEAK_TFLOPS_MAX = 1e6  # an exaflop/s, beyond any one device


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
    """seed-mlp, teacher-mlp, char-lm, resnet, or module:function."""
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
    """Epochs; not given: 1, or with max_steps alone as many as max_steps takes."""
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
    lr: number(">= 0", Ge(0), Le(LR_MAX), above=f"at most {LR_MAX:g}") = 0.01
    momentum: number("in [0, 1)", Ge(0), Lt(1)) = 0.0
    weight_decay: (
        number(">= 0", Ge(0), Le(WEIGHT_DECAY_MAX), above=f"at most {WEIGHT_DECAY_MAX:g}") | None
    ) = None
    """None: the optimizer's own torch default (SGD 0, AdamW 0.01)."""
    scheduler: Literal[SCHEDULERS] = "constant"
    scheduler_interval: Literal[INTERVALS] = "step"
    warmup: integer(0) = 0
    """Scheduler intervals of linear warm-up (linear-warmup, cosine)."""
    step_size: integer(1) = 1
    """Step decay: intervals between decays."""
    gamma: number("> 0", Gt(0), Le(GAMMA_MAX), above="at most 1 (a decay factor)") = 0.1
    """Step decay factor."""
    grad_clip: number("> 0", Gt(0), Le(FLOAT32_MAX), above=FLOAT32_TEXT) | None = None
    # It costs one foreach norm, ~15 us on seed-mlp's ~100 us CPU step, so it is sampled.
    grad_norm_every: integer(0, " (0: never)") = 16
    """Global gradient norm every N optimizer steps (1: every step; 0: never)."""
    noise_scale_every: integer(0, " (0: never)") = 256
    """Measure the gradient noise scale B_simple every N optimizer steps (0: never)."""
    # validation and early stopping
    eval_every: integer(0, " (0: never)") | None = None
    """Optimizer steps between evaluations; none: at the end of every epoch; 0: never."""
    patience: integer(1) | None = None
    """Evaluations without improvement before stopping; none: never stop early."""
    min_delta: number(">= 0", Ge(0), Le(FLOAT32_MAX), above=FLOAT32_TEXT) = 0.0
    restore_best: Flag = False
    """At the end, load the weights that ``restore`` picks."""
    restore: Literal[RESTORE_RULES] = "best"
    """best: the lowest validation loss; last_improvement: the last evaluation that beat
    the reference by more than min_delta (Keras' rule). The same when min_delta is 0."""
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
    time_limit_s: (
        number("> 0", Gt(0), Le(TIME_LIMIT_MAX_S), above=f"at most {TIME_LIMIT_MAX_S:.0f} (a year)")
        | None
    ) = None
    peak_tflops: (
        number("> 0", Gt(0), Le(PEAK_TFLOPS_MAX), above=f"at most {PEAK_TFLOPS_MAX:g}") | None
    ) = None
    """The device's peak for MFU (overrides the table)."""
    # data parallel (bench.ddp)
    nproc: integer(1, " (ranks)", maximum=1024) | None = None
    """Data-parallel ranks, each taking batch_size samples per micro-batch (DDP: gloo on
    CPU, NCCL on CUDA with one GPU per rank); none: one process, no DDP."""
    sync: Literal[SYNCS] = "window"
    """DDP gradient all-reduce: once per window (no_sync on the first k - 1 micro-batches)
    or after every micro-batch."""

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, values: Any, handler: Any) -> Any:
        # However it is built (keywords, replace, a mapping), a bad value is one line.
        values = _epochs_for_max_steps_alone(values)
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
        if self.nproc is not None and self.data_path == "dataloader":
            raise ConfigError(
                "nproc: data-parallel ranks take their share of device tensors; "
                "data_path 'dataloader' is one process only"
            )

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
        for key, default in PARALLEL_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        d["workload_options"] = dict(sorted(self.workload_options.items()))
        return d

    def plan_arguments(self, samples: int) -> dict[str, Any]:
        """The keyword arguments of :func:`bench.plan.make_plan` this configuration fixes."""
        return dict(
            samples=samples,
            batch_size=self.batch_size,
            accumulation_steps=self.accumulation_steps,
            mode=self.mode,
            epochs=self.epochs,
            max_steps=self.max_steps,
            drop_last=self.drop_last,
            partial_window=self.partial_window,
        )

    def plan(self, samples: int) -> Plan:
        """The epoch / window / step plan of this configuration over ``samples`` (N)."""
        plan = make_plan(**self.plan_arguments(samples))
        if plan.total_steps > INT64_MAX:  # planned_steps, an int64 column
            raise ConfigError(
                f"{plan.total_steps} planned optimizer steps ({plan.steps_per_epoch} per epoch x "
                f"{self.epochs} epochs) exceed 2**63 - 1: lower epochs or set max_steps"
            )
        return plan

    @property
    def effective_weight_decay(self) -> float:
        """The weight decay the optimizer gets: the given one, else torch's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return TORCH_WEIGHT_DECAY[self.optimizer]

    @property
    def trial_key(self) -> str:
        """Content hash of the configuration, seed included (16 hex digits).

        It hashes what is trained: the weight decay as the optimizer gets it (an unset
        one and torch's default written out are one configuration), and the fields of
        KEY_OMITS_AT_DEFAULT only when set, so a configuration that leaves them alone
        keeps the key stored results and studies hold for it.
        """
        values = self.to_dict()
        values["weight_decay"] = float(self.effective_weight_decay)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in KEY_OMITS_AT_DEFAULT:
            if values[name] == defaults[name]:
                del values[name]
        blob = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Fields added after results were first stored, hashed into trial_key only when set.
KEY_OMITS_AT_DEFAULT = ("restore", "noise_scale_every")


def _epochs_for_max_steps_alone(values: Any) -> Any:
    """max_steps given and epochs not: epochs None, whatever the field's default (1), so
    that max_steps means "run until max_steps" here as in ``bench.plan.default_epochs``.
    An explicit ``epochs`` (``replace`` passes every field) is kept."""
    kwargs = getattr(values, "kwargs", None)  # keyword construction: ArgsKwargs
    if isinstance(values, Mapping):
        kwargs = values
    if kwargs is None or "epochs" in kwargs or kwargs.get("max_steps") is None:
        return values
    epochs = default_epochs(kwargs["max_steps"])
    if isinstance(values, Mapping):
        return {**values, "epochs": epochs}
    return ArgsKwargs(values.args, {**kwargs, "epochs": epochs})


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


# Levels of arrays and tables a value may nest. A spec or config needs 4 or so; tomllib
# raises RecursionError past ~500, and a value just under that leaves little stack to
# the recursive walks after it (validation, dataclasses.asdict, hashing).
MAX_NESTING = 32
NESTED_TOO_DEEP = f"nested too deep: arrays and tables go at most {MAX_NESTING} levels deep"


def check_nesting(value: Any, *, where: str = "") -> None:
    """ConfigError (one line) when ``value`` nests lists or tables past MAX_NESTING.
    Iterative: it must not recurse into what it guards against."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            item = list(item.values())
        if isinstance(item, list | tuple):
            if depth >= MAX_NESTING:
                raise ConfigError(f"{where}: {NESTED_TOO_DEEP}" if where else NESTED_TOO_DEEP)
            stack.extend((child, depth + 1) for child in item)


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
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"{path}: {NESTED_TOO_DEEP}") from None
    check_nesting(data, where=str(path))
    return data


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
    if value > INT64_MAX:
        raise ConfigError(f"{key} must be {INT64_TEXT}, got {text!r}")
    return value


def format_bytes(n: int | float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
