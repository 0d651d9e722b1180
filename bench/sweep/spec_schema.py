"""The shape of a sweep spec file: pydantic models that validate it and give its JSON
Schema (``python -m bench schema spec``, the ``#:schema`` line of experiments/*.toml).

Tables of TrialConfig keys (``[base]``, ``[budget]``, ``[[cases]]``, ``[grid]`` axes)
take each key's type, bounds, choices and description from TrialConfig's own fields, so
a file and a configuration are checked by one definition. Errors are turned into one
line by :func:`bench.errors.validation_error`; see :mod:`bench.sweep.spec` for loading
and expansion into trials.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Ge, Gt, Le, MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from bench.config import DOCUMENTED, STRICT, Device, TrialConfig, integer, parse_size
from bench.errors import Accepts, ConfigError, did_you_mean, invalid

SAMPLERS = ("random", "tpe", "nsga2")
MAX_POINTS = 100_000  # default of a spec's max_points
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
CONFIG_KEYS = tuple(f.name for f in fields(TrialConfig))
BUDGET_KEYS = ("epochs", "max_steps", "time_limit_s")
OPTION_PREFIX = "workload_options."
# Keys a sweep sets from the point, never from the spec body.
_RESERVED = {"seed": "set seeds with the top-level 'seeds' key"}
_HINTS = typing.get_type_hints(TrialConfig)


def _range_kind(hint: Any) -> str | None:
    """'int' / 'float' for a numeric TrialConfig field, None for others (bool, str ...)."""
    members = set(typing.get_args(hint)) - {type(None)} or {hint}
    return {frozenset({int}): "int", frozenset({float}): "float"}.get(frozenset(members))


# TrialConfig keys a search range may sample, and whether as integers or floats.
RANGE_KINDS = {k: kind for k, h in _HINTS.items() if k != "seed" and (kind := _range_kind(h))}


@dataclass(frozen=True)
class Constraint:
    """``column op limit``; Optuna's convention: value <= 0 means satisfied."""

    column: str
    op: str  # "<=" or ">="
    limit: float
    text: str

    def violation(self, value: float | None) -> float:
        # Unknown (null: e.g. reserved bytes on a CPU run) cannot be held against a trial.
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return 0.0
        return float(value) - self.limit if self.op == "<=" else self.limit - float(value)


def _absent(schema: dict[str, Any]) -> None:
    """Schema of a key that is simply left out when not set: no default, no null."""
    schema.pop("default", None)
    members = [m for m in schema.pop("anyOf", []) if m.get("type") != "null"]
    if len(members) == 1:
        schema.update(members[0])
    elif members:
        schema["anyOf"] = members


def _config_field(name: str, *, axis: bool = False) -> tuple[Any, Any]:
    """TrialConfig's field ``name`` for a spec table: its type (bounds, choices) and
    description; ``axis``: a grid axis, a non-empty list of such values."""
    info = TrialConfig.__pydantic_fields__[name]
    annotation = info.rebuild_annotation()
    if axis:
        listed = Annotated[list[annotation], MinLen(1), Accepts("a list of values")]
        return listed, Field(None, description=info.description, json_schema_extra=_absent)
    if info.default_factory is not None:
        return annotation, Field(default_factory=info.default_factory, description=info.description)
    return annotation, Field(info.default, description=info.description)


class _Table(BaseModel):
    model_config = ConfigDict(**STRICT, frozen=True)


class _Layer(_Table):
    """A table of TrialConfig keys; a ``workload_options.NAME`` key sets one option."""

    model_config = ConfigDict(
        json_schema_extra={"patternProperties": {rf"^{re.escape(OPTION_PREFIX)}.+$": {}}}
    )
    reserved: ClassVar[Mapping[str, str]] = _RESERVED

    @model_validator(mode="before")
    @classmethod
    def _options_and_reserved(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data  # pydantic names the wrong type
        out, options = {}, {}
        for key, value in data.items():
            if key in cls.reserved:
                raise invalid(cls.reserved[key], key=str(key))
            if isinstance(key, str) and key.startswith(OPTION_PREFIX):
                if not key.removeprefix(OPTION_PREFIX):
                    raise invalid("name the option after the dot", key=key)
                options[key.removeprefix(OPTION_PREFIX)] = value
            else:
                out[key] = value
        return cls._with_options(out, options)

    @classmethod
    def _with_options(cls, data: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        return data  # an option's value is the workload's to check


class _BaseLayer(_Layer):
    reserved = {
        **_RESERVED,
        **dict.fromkeys(
            ("workload", "workload_options", "device"),
            "set it in [workload] / the top-level 'device' instead",
        ),
    }


class _GridLayer(_Layer):
    model_config = ConfigDict(
        json_schema_extra={
            "patternProperties": {
                rf"^{re.escape(OPTION_PREFIX)}.+$": {"type": "array", "minItems": 1}
            }
        }
    )

    @classmethod
    def _with_options(cls, data: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        nested = data.get("workload_options", {})
        if options and isinstance(nested, Mapping):
            data["workload_options"] = {**nested, **options}
        return data

    @model_validator(mode="after")
    def _distinct_values(self) -> _GridLayer:
        axes = axes_of(self.model_dump(exclude_unset=True))
        for axis, values in axes.items():
            try:
                shown = [json.dumps(v, sort_keys=True, allow_nan=False) for v in values]
            except (TypeError, ValueError):
                raise invalid("a value is not a config value (a date or time?)", key=axis) from None
            if len(set(shown)) != len(shown):
                raise invalid(f"repeated values: {list(values)}", key=axis)
        return self


BaseTable = create_model(
    "BaseTable",
    __base__=_BaseLayer,
    __doc__="TrialConfig keys shared by every trial (not workload, device or seed).",
    **{k: _config_field(k) for k in CONFIG_KEYS if k not in _BaseLayer.reserved},
)
BudgetTable = create_model(
    "BudgetTable",
    __base__=_Table,
    __doc__="How long each trial trains (with epochs and max_steps: whichever ends first).",
    **{k: _config_field(k) for k in BUDGET_KEYS},
)
CaseTable = create_model(
    "CaseTable",
    __base__=_Layer,
    __doc__="One case: TrialConfig keys over the base (not seed).",
    **{k: _config_field(k) for k in CONFIG_KEYS if k not in _RESERVED},
)
GridTable = create_model(
    "GridTable",
    __base__=_GridLayer,
    __doc__="Axes of the Cartesian product: TrialConfig key = [values].",
    workload_options=(
        Annotated[
            dict[str, Annotated[list[Any], MinLen(1), Accepts("a list of values")]],
            Accepts("a table of option = [values]"),
        ],
        Field(None, description="Workload options as axes.", json_schema_extra=_absent),
    ),
    **{
        k: _config_field(k, axis=True)
        for k in CONFIG_KEYS
        if k not in _RESERVED and k != "workload_options"
    },
)


def axes_of(grid: Mapping[str, Any]) -> dict[str, Any]:
    """Grid axes in the file's order; options of a nested table after the others, as
    ``workload_options.NAME``."""
    axes = {k: v for k, v in grid.items() if k != "workload_options"}
    for k, v in (grid.get("workload_options") or {}).items():
        axes.setdefault(f"{OPTION_PREFIX}{k}", v)
    return axes


class WorkloadTable(_Table):
    """What is trained."""

    model_config = DOCUMENTED

    name: Annotated[
        str,
        MinLen(1),
        Accepts("a workload name (seed-mlp, teacher-mlp, char-lm, module:function)"),
    ]
    """seed-mlp, teacher-mlp, char-lm, or module:function."""
    options: Annotated[dict[str, Any], Accepts("a table of workload options")] = {}
    """Keyword options of the workload's factory."""


class RangeTable(_Table):
    """An interval Optuna samples a TrialConfig key from."""

    model_config = DOCUMENTED

    low: Annotated[float, Accepts("a finite number")]
    high: Annotated[float, Accepts("a finite number")]
    log: bool = False
    """Sample on a log scale (needs low > 0)."""
    step: Annotated[float, Gt(0), Accepts("a number > 0")] | None = None
    """Discretisation step (not with log)."""

    @model_validator(mode="after")
    def _consistent(self) -> RangeTable:
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got {self.low:g} and {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.step is not None and self.log:
            raise ValueError("step and log do not go together")
        return self


class _Ranges(_Table):
    @model_validator(mode="before")
    @classmethod
    def _numeric_keys(cls, data: Any) -> Any:
        for key, r in data.items() if isinstance(data, Mapping) else ():
            if key in _RESERVED:
                raise invalid(_RESERVED[key], key=str(key))
            if key in CONFIG_KEYS and key not in RANGE_KINDS:
                kind = getattr(_HINTS[key], "__name__", None) or str(_HINTS[key])
                raise invalid(
                    f"{key} is not a numeric TrialConfig key (it is {kind}); "
                    "give its values as a [grid] axis instead",
                    key=key,
                )
            ends = {n: r.get(n) for n in ("low", "high", "step")} if isinstance(r, Mapping) else {}
            if RANGE_KINDS.get(key) == "int" and any(isinstance(v, float) for v in ends.values()):
                got = ", ".join(f"{n} = {v!r}" for n, v in ends.items() if v is not None)
                raise invalid(
                    f"{key} is an integer key, so low, high (and step) must be integers, got {got}",
                    key=key,
                )
        return data

    @model_validator(mode="after")
    def _ends_are_valid_values(self) -> _Ranges:
        # Each end on its own over the defaults: a bound that no trial could use
        # (accumulation_steps = 0, momentum = 1) is refused now, not per trial.
        for key in self.model_fields_set:
            r = getattr(self, key)
            for end in ("low", "high"):
                value = getattr(r, end)
                try:
                    TrialConfig(**{key: int(value) if RANGE_KINDS[key] == "int" else value})
                except ConfigError as exc:
                    raise invalid(str(exc), key=f"{key}.{end}") from None
        return self


RangesTable = create_model(
    "RangesTable",
    __base__=_Ranges,
    __doc__="Search ranges: a numeric TrialConfig key = { low = .., high = .. }.",
    **{
        k: (
            Annotated[RangeTable, Accepts("a table like {low = 1e-3, high = 1.0, log = true}")]
            | None,
            Field(None, json_schema_extra=_absent),
        )
        for k in RANGE_KINDS
    },
)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _numeric_columns() -> dict[str, str]:
    import pyarrow as pa

    from bench.store import TRIAL_COLUMNS

    return {
        name: str(t)
        for name, t in TRIAL_COLUMNS.items()
        if pa.types.is_integer(t) or pa.types.is_floating(t)
    }


def _check_column(name: str) -> None:
    from bench.store import TRIAL_COLUMNS

    numeric = _numeric_columns()
    if name not in numeric:
        if name in TRIAL_COLUMNS:
            raise ValueError(f"{name!r} is not a numeric trials column")
        raise ValueError(f"{name!r} is not a trials column{did_you_mean(name, numeric)}")


_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(.+?)\s*$")


def parse_constraint(text: str) -> Constraint:
    """'peak_reserved_bytes <= 16GiB' -> Constraint; ValueError names what is wrong."""
    m = _CONSTRAINT_RE.match(text)
    if not m:
        raise ValueError(f"cannot read {text!r}; write e.g. 'peak_reserved_bytes <= 16GiB'")
    col, op, value = m.groups()
    _check_column(col)
    value = value.strip().strip("'\"")
    if col.endswith("_bytes"):
        try:
            limit = float(parse_size(value, key="limit"))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    else:
        try:
            limit = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(limit):
            raise ValueError("the limit must be finite")
    return Constraint(col, op, limit, text.strip())


def _constraint_text(text: str) -> str:
    parse_constraint(text)
    return text


Columns = Annotated[
    list[str],
    BeforeValidator(_as_list, json_schema_input_type=str | list[str]),
    Accepts("a column name or a list of them"),
]


class SearchTable(_Table):
    """Let an Optuna sampler choose the trials (grid values, cases, seeds and ranges).
    Without it every grid point runs, and the study minimises tail_loss."""

    model_config = DOCUMENTED

    sampler: Literal[SAMPLERS] = "tpe"
    n_trials: Annotated[int, Ge(1), Le(100_000), Accepts("an integer in [1, 100000]")]
    """Trials the sampler runs."""
    seed: integer(0, maximum=2**32 - 1, above="at most 2**32 - 1 (numpy's seed range)") | None = (
        Field(None, json_schema_extra=_absent)
    )
    """Seed of the sampler (Optuna's samplers seed numpy: 0 .. 2**32 - 1)."""
    maximize: Columns = []
    """Numeric trials columns to maximise (e.g. samples_per_s)."""
    minimize: Columns = []
    """Numeric trials columns to minimise (e.g. tail_loss, which final_loss is noisier than)."""
    constraints: Annotated[
        list[Annotated[str, AfterValidator(_constraint_text)]],
        BeforeValidator(_as_list, json_schema_input_type=str | list[str]),
        Accepts("a constraint or a list of them, e.g. 'peak_reserved_bytes <= 16GiB'"),
    ] = []
    """'column <= limit' / 'column >= limit'; sizes for *_bytes columns (16GiB)."""
    ranges: RangesTable = Field(default_factory=RangesTable)

    @field_validator("maximize", "minimize")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_column(name)
        return value

    @model_validator(mode="after")
    def _objectives(self) -> SearchTable:
        named = [*self.maximize, *self.minimize]
        if not named:
            raise ValueError("needs an objective: maximize = [...] or minimize = [...]")
        if len(set(named)) != len(named):
            raise ValueError("a column is both maximised and minimised, or listed twice")
        return self


def _seed_list(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 10_000:
            raise invalid(as_type=True)
        return list(range(value))
    return value


def _size_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid(as_type=True)
    return parse_size(value, key="memory_cap")


class SpecFile(_Table):
    """A sweep spec (experiments/*.toml): which configurations a sweep compares."""

    model_config = DOCUMENTED

    name: Annotated[
        str,
        StringConstraints(pattern=NAME_PATTERN),
        Accepts("a sweep name (letters, digits, '.', '_', '-'; up to 100)"),
    ]
    """The sweep's name: its results folder and its Optuna study."""
    description: str = ""
    """What the sweep asks, when the file does not start with a comment saying it."""
    device: Device = "auto"
    seeds: Annotated[
        list[integer(0)],
        MinLen(1),
        BeforeValidator(
            _seed_list,
            json_schema_input_type=Annotated[int, Ge(1), Le(10_000)] | list[integer(0)],
        ),
        Accepts("a count in [1, 10000] or a non-empty list of integers >= 0"),
    ] = [0]
    """Seeds every configuration runs with: a count n (0 .. n-1) or a list."""
    memory_cap: Annotated[
        int | None,
        BeforeValidator(_size_or_none, json_schema_input_type=str | Annotated[int, Gt(0)]),
        Accepts("a size such as '2GiB'"),
    ] = Field(None, json_schema_extra=_absent)
    """Memory each worker may use (e.g. '2GiB'); beyond it a trial is an oom."""
    workload: Annotated[
        WorkloadTable, Accepts("a table: [workload] name = 'seed-mlp', options = {...}")
    ]
    base: BaseTable = Field(default_factory=BaseTable)
    budget: BudgetTable = Field(default_factory=BudgetTable)
    cases: Annotated[list[CaseTable], Accepts("an array of tables ([[cases]])")] = []
    grid: GridTable = Field(default_factory=GridTable)
    search: SearchTable | None = Field(None, json_schema_extra=_absent)
    # ~0.2 ms and ~2 KB a point to expand: 100,000 took 21 s and 170 MB (2-core EPYC).
    max_points: integer(1) = MAX_POINTS
    """Refuse a spec whose cases x grid x seeds exceed this many points (counted first)."""
    execution: Literal["solo", "stacked"] = "solo"
    """stacked: trials differing only in lr, momentum, decay, schedule, seed train as one."""
    max_stack: integer(1, maximum=4096) = 64
    """stacked: the most trials one stack trains together."""

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeated values: {value}")
        return value

    @model_validator(mode="after")
    def _something_to_sweep(self) -> SpecFile:
        axes = axes_of(self.grid.model_dump(exclude_unset=True))
        if "grid" in self.model_fields_set and not axes:
            raise invalid("grid is empty: give at least one axis, e.g. batch_size = [8, 32]")
        if not axes and not self.cases:
            raise invalid("nothing to sweep: give [grid] axes or [[cases]]")
        for key in self.search.ranges.model_fields_set if self.search else ():
            if key in axes:
                raise invalid(f"{key} is already a grid axis", key=f"search.ranges.{key}")
        return self


def spec_schema() -> dict[str, Any]:
    """JSON Schema of a spec file, for editors (taplo's ``#:schema`` directive)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **SpecFile.model_json_schema(),
    }
