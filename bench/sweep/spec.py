"""Sweep spec files (``experiments/*.toml``): loading, validation, expansion into trials.

A spec declares *which* configurations to compare; every trial it produces is a
validated :class:`bench.config.TrialConfig`. Layers, later ones win:

    TrialConfig defaults < [workload] < [base] < [budget] < device < one [[cases]] entry
    < one grid point < one seed

``[grid]`` axes form a Cartesian product; ``[[cases]]`` (optional) is a list of partial
configurations for comparisons that are not a product (SGD at b=1 next to MBGD at b=20,
or (b, k) pairs with a fixed b*k); the trials are cases x grid x seeds. A grid axis may
name a workload option as ``"workload_options.width" = [64, 128]`` (or a nested table
``[grid.workload_options] width = [64, 128]``).

Errors: a bad spec raises :class:`bench.errors.ConfigError` with one line that names
the key (``grid.lr[1]``, ``search.sampler`` ...). Grid *points* that are invalid only in
combination (batch_size > samples, say) are not errors: they are reported and skipped.
Nothing here writes anything.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.config import TrialConfig, parse_size, read_toml
from bench.errors import BenchError, ConfigError, did_you_mean, unknown

TOP_KEYS = (
    "name",
    "description",
    "device",
    "seeds",
    "memory_cap",
    "workload",
    "base",
    "budget",
    "grid",
    "cases",
    "search",
)
BUDGET_KEYS = ("epochs", "max_steps", "time_limit_s")
SEARCH_KEYS = ("sampler", "n_trials", "seed", "maximize", "minimize", "constraints", "ranges")
SAMPLERS = ("random", "tpe", "nsga2")
RANGE_KEYS = ("low", "high", "log", "step")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CONFIG_KEYS = tuple(f.name for f in fields(TrialConfig))
# Keys a sweep sets from the point, never from the spec body.
_RESERVED = ("seed",)


@dataclass(frozen=True)
class Objective:
    column: str  # a numeric trials column
    direction: str  # "maximize" / "minimize"


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


@dataclass(frozen=True)
class Range:
    name: str
    low: float
    high: float
    log: bool
    step: float | None
    integer: bool


@dataclass(frozen=True)
class SearchSpec:
    sampler: str
    n_trials: int
    seed: int | None
    ranges: tuple[Range, ...] = ()


@dataclass(frozen=True)
class Point:
    """One trial of a grid sweep: its config and the values that made it (for display)."""

    config: TrialConfig
    params: Mapping[str, Any]
    label: str = ""  # the case's settings and the axis values, for log lines

    @property
    def key(self) -> str:
        return self.config.trial_key


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    question: str  # the header comment: what the sweep asks
    device: str
    memory_cap_bytes: int | None
    seeds: tuple[int, ...]
    base: Mapping[str, Any]  # the merged base layer (workload, options, base, budget, device)
    cases: tuple[Mapping[str, Any], ...]
    axes: Mapping[str, tuple[Any, ...]]
    points: tuple[Point, ...]  # valid, distinct trials (grid mode: all of them)
    skipped: tuple[tuple[Mapping[str, Any], str], ...]  # invalid points and why
    duplicates: int  # points that collapsed onto another's trial_key
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    search: SearchSpec | None
    spec_hash: str = ""
    points_by_key: Mapping[str, Point] = field(default_factory=dict)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def total(self) -> int:
        """Trials the sweep runs: every grid point, or the search's n_trials."""
        return self.search.n_trials if self.search else len(self.points)

    def config_for(self, case: int, values: Mapping[str, Any], seed: int) -> TrialConfig:
        """Build a config from a case index, axis/range values and a seed (search mode)."""
        return _build(self.base, self.cases[case], values, seed)


# -- loading ---------------------------------------------------------------------------


def load_spec(path: str | Path, *, check_workloads: bool = True) -> SweepSpec:
    """Read, validate and expand a spec file. Raises ConfigError (one line) when bad."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no spec file at {path}")
    raw = read_toml(path)
    text = path.read_text(encoding="utf-8")
    try:
        return parse_spec(raw, path=path, text=text, check_workloads=check_workloads)
    except BenchError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        # A validation path that missed a shape: still one line, never a traceback.
        raise ConfigError(f"{path}: cannot read the spec: {type(exc).__name__}: {exc}") from None


def header_comment(text: str) -> str:
    """The comment lines at the top of a file, without the '#'."""
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            lines.append(s.lstrip("#").strip())
        elif s:
            break
        elif lines:
            lines.append("")
    return "\n".join(lines).strip()


def _where(path: Path | None) -> str:
    return f"{path}: " if path else ""


def _table(raw: Mapping[str, Any], key: str, at: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{at}{key} must be a table, got {type(value).__name__}")
    return dict(value)


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], at: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{at}unknown key '{prefix}{key}'{did_you_mean(str(key), allowed)}")


def _check_config_keys(
    table: Mapping[str, Any], at: str, prefix: str, *, allow_options: bool = True
) -> None:
    for key in table:
        if not isinstance(key, str):
            raise ConfigError(f"{at}{prefix}: keys must be strings")
        if allow_options and key.startswith("workload_options."):
            if not key.removeprefix("workload_options."):
                raise ConfigError(f"{at}{prefix}{key!r}: name the option after the dot")
            continue
        if key not in CONFIG_KEYS:
            raise ConfigError(
                f"{at}unknown key '{prefix}{key}'{did_you_mean(key, CONFIG_KEYS)}; "
                "expected a TrialConfig key (see bench/config.py)"
            )
        if key in _RESERVED:
            raise ConfigError(f"{at}{prefix}{key}: set seeds with the top-level 'seeds' key")


def _json_safe(value: Any) -> Any:
    """TOML values are JSON-able except dates/times; those are not config values."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


def parse_spec(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    text: str = "",
    check_workloads: bool = True,
) -> SweepSpec:
    at = _where(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{at}a spec is a TOML table")
    _check_keys(raw, TOP_KEYS, at, "")

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{at}name must be a sweep name (letters, digits, '.', '_', '-'; up to 100), got {name!r}"
        )
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{at}description must be a string")
    question = header_comment(text) or description
    if not question:
        raise ConfigError(
            f"{at}the spec must start with a comment (or set 'description') saying what question it answers"
        )

    device = raw.get("device", "auto")
    if not isinstance(device, str):
        raise ConfigError(f"{at}device must be a string such as 'auto', 'cpu' or 'cuda'")

    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= 10_000:
            raise ConfigError(
                f"{at}seeds must be a count in [1, 10000] or a list of seeds, got {seeds}"
            )
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{at}seeds must be a non-empty list of integers (or a count)")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{at}seeds[{i}] must be an integer >= 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{at}seeds has repeated values: {seeds}")

    memory_cap = raw.get("memory_cap")
    cap_bytes = None
    if memory_cap is not None:
        if isinstance(memory_cap, bool) or not isinstance(memory_cap, str | int):
            raise ConfigError(f"{at}memory_cap must be a size such as '2GiB', got {memory_cap!r}")
        cap_bytes = parse_size(memory_cap, key=f"{at}memory_cap")

    # [workload]
    if "workload" not in raw:
        raise ConfigError(f"{at}missing [workload] table (name = 'seed-mlp', options = {{...}})")
    wl = _table(raw, "workload", at)
    _check_keys(wl, ("name", "options"), at, "workload.")
    wl_name = wl.get("name")
    if not isinstance(wl_name, str) or not wl_name:
        raise ConfigError(
            f"{at}workload.name must be a workload name (seed-mlp, teacher-mlp, char-lm, module:function)"
        )
    wl_options = wl.get("options", {})
    if not isinstance(wl_options, Mapping):
        raise ConfigError(f"{at}workload.options must be a table")

    base = _table(raw, "base", at)
    _check_config_keys(base, at, "base.")
    for key in ("workload", "workload_options", "device"):
        if key in base:
            raise ConfigError(
                f"{at}base.{key}: set it in [workload] / the top-level 'device' instead"
            )
    budget = _table(raw, "budget", at)
    _check_keys(budget, BUDGET_KEYS, at, "budget.")

    layer: dict[str, Any] = {"workload": wl_name, "workload_options": dict(wl_options)}
    layer.update(base)
    layer.update(budget)
    layer["device"] = device
    _dotted_into(layer)
    _check_value_types(layer, at, "base")

    # [[cases]]
    cases_raw = raw.get("cases", [])
    if not isinstance(cases_raw, list) or not all(isinstance(c, Mapping) for c in cases_raw):
        raise ConfigError(f"{at}cases must be an array of tables ([[cases]])")
    cases: list[dict[str, Any]] = []
    for i, case in enumerate(cases_raw):
        case = dict(case)
        _check_config_keys(case, at, f"cases[{i}].")
        if "workload_options" in case and not isinstance(case["workload_options"], Mapping):
            raise ConfigError(f"{at}cases[{i}].workload_options must be a table")
        _dotted_into(case)
        _check_value_types({**layer, **case}, at, f"cases[{i}]")
        cases.append(case)

    # [grid]
    axes: dict[str, tuple[Any, ...]] = {}
    if "grid" in raw:
        grid = _table(raw, "grid", at)
        nested = grid.pop("workload_options", None)
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise ConfigError(f"{at}grid.workload_options must be a table of option = [values]")
            for k, v in nested.items():
                grid[f"workload_options.{k}"] = v
        _check_config_keys(grid, at, "grid.")
        if not grid:
            raise ConfigError(
                f"{at}grid is empty: give at least one axis, e.g. batch_size = [8, 32]"
            )
        for axis, values in grid.items():
            if not isinstance(values, list):
                raise ConfigError(f"{at}grid.{axis} must be a list of values, got {values!r}")
            if not values:
                raise ConfigError(f"{at}grid.{axis} is empty: give at least one value")
            for j, v in enumerate(values):
                if _json_safe(v) is None:
                    raise ConfigError(f"{at}grid.{axis}[{j}]: {v!r} is not a config value")
                # Each value must be valid on its own; only combinations may be skipped.
                _check_value_types({**layer, **_dotted_into({axis: v})}, at, f"grid.{axis}[{j}]")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ConfigError(f"{at}grid.{axis} has repeated values: {values}")
            axes[axis] = tuple(values)
    if not axes and not cases:
        raise ConfigError(f"{at}nothing to sweep: give [grid] axes or [[cases]]")

    # [search]
    search = None
    objectives: list[Objective] = []
    constraints: list[Constraint] = []
    if "search" in raw:
        search, objectives, constraints = _parse_search(_table(raw, "search", at), at, axes)
    if not objectives:
        objectives = [Objective("final_loss", "minimize")]

    spec = SweepSpec(
        name=name,
        path=path or Path("<spec>"),
        question=question,
        device=device,
        memory_cap_bytes=cap_bytes,
        seeds=tuple(seeds),
        base=layer,
        cases=tuple(cases) or ({},),
        axes=axes,
        points=(),
        skipped=(),
        duplicates=0,
        objectives=tuple(objectives),
        constraints=tuple(constraints),
        search=search,
    )
    return _expand(spec, at, check_workloads=check_workloads)


def _dotted_into(d: dict[str, Any]) -> dict[str, Any]:
    """Move 'workload_options.x' keys into the workload_options table (in place)."""
    dotted = [k for k in d if isinstance(k, str) and k.startswith("workload_options.")]
    if dotted:
        options = dict(d.get("workload_options") or {})
        for k in dotted:
            options[k.removeprefix("workload_options.")] = d.pop(k)
        d["workload_options"] = options
    return d


def _check_value_types(values: Mapping[str, Any], at: str, where: str) -> None:
    """Build a TrialConfig from ``values`` alone to catch wrong types and ranges early."""
    probe = dict(values)
    if probe.get("epochs") is None and probe.get("max_steps") is None:
        probe.setdefault("epochs", 1)
    try:
        TrialConfig.from_mapping(probe, where=where)
    except ConfigError as exc:
        raise ConfigError(f"{at}{exc}") from None


def _names(value: Any, at: str, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{at}{key} must be a column name or a list of them")
    return value


def _numeric_columns() -> dict[str, str]:
    import pyarrow as pa

    from bench.store import TRIAL_COLUMNS

    return {
        name: str(t)
        for name, t in TRIAL_COLUMNS.items()
        if pa.types.is_integer(t) or pa.types.is_floating(t)
    }


def _check_column(name: str, at: str, key: str) -> None:
    from bench.store import TRIAL_COLUMNS

    numeric = _numeric_columns()
    if name not in numeric:
        if name in TRIAL_COLUMNS:
            raise ConfigError(f"{at}{key}: {name!r} is not a numeric trials column")
        raise ConfigError(
            f"{at}{key}: {name!r} is not a trials column{did_you_mean(name, numeric)}"
        )


# TrialConfig's field types (annotations are strings here): what a range may sample.
_FIELD_TYPES = {f.name: str(f.type) for f in fields(TrialConfig)}


def _range_kind(annotation: str) -> str | None:
    """'int' / 'float' for a numeric TrialConfig field, None for others (bool, str ...)."""
    parts = {p.strip() for p in annotation.split("|")} - {"None"}
    if parts == {"int"}:
        return "int"
    if parts == {"float"}:
        return "float"
    return None


_RANGE_KINDS = {k: kind for k, t in _FIELD_TYPES.items() if (kind := _range_kind(t)) is not None}

_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(.+?)\s*$")


def _parse_search(
    s: dict[str, Any], at: str, axes: Mapping[str, tuple[Any, ...]]
) -> tuple[SearchSpec, list[Objective], list[Constraint]]:
    _check_keys(s, SEARCH_KEYS, at, "search.")
    sampler = s.get("sampler", "tpe")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ConfigError(f"{at}search.sampler: {unknown('sampler', str(sampler), SAMPLERS)}")
    n_trials = s.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or not 1 <= n_trials <= 100_000:
        raise ConfigError(
            f"{at}search.n_trials must be an integer in [1, 100000], got {n_trials!r}"
        )
    seed = s.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"{at}search.seed must be an integer >= 0, got {seed!r}")
    objectives: list[Objective] = []
    for direction in ("maximize", "minimize"):
        for col in _names(s.get(direction, []), at, f"search.{direction}"):
            _check_column(col, at, f"search.{direction}")
            objectives.append(Objective(col, direction))
    if len({o.column for o in objectives}) != len(objectives):
        raise ConfigError(f"{at}search: a column is both maximised and minimised, or listed twice")
    if not objectives:
        raise ConfigError(f"{at}search needs an objective: maximize = [...] or minimize = [...]")
    constraints: list[Constraint] = []
    for i, text in enumerate(_names(s.get("constraints", []), at, "search.constraints")):
        m = _CONSTRAINT_RE.match(text)
        if not m:
            raise ConfigError(
                f"{at}search.constraints[{i}]: cannot read {text!r}; write e.g. 'peak_reserved_bytes <= 16GiB'"
            )
        col, op, value = m.groups()
        _check_column(col, at, f"search.constraints[{i}]")
        value = value.strip().strip("'\"")
        if col.endswith("_bytes"):
            limit = float(parse_size(value, key=f"{at}search.constraints[{i}]"))
        else:
            try:
                limit = float(value)
            except ValueError:
                raise ConfigError(
                    f"{at}search.constraints[{i}]: {value!r} is not a number"
                ) from None
            if not math.isfinite(limit):
                raise ConfigError(f"{at}search.constraints[{i}]: the limit must be finite")
        constraints.append(Constraint(col, op, limit, text.strip()))
    ranges: list[Range] = []
    ranges_raw = s.get("ranges", {})
    if not isinstance(ranges_raw, Mapping):
        raise ConfigError(f"{at}search.ranges must be a table of key = {{low = .., high = ..}}")
    for key, r in ranges_raw.items():
        where = f"search.ranges.{key}"
        if key not in CONFIG_KEYS or key in ("workload", "workload_options", "device", "seed"):
            raise ConfigError(
                f"{at}unknown key {where!r}{did_you_mean(key, CONFIG_KEYS)}; a range needs a numeric TrialConfig key"
            )
        if key in axes:
            raise ConfigError(f"{at}{where}: {key} is already a grid axis")
        kind = _RANGE_KINDS.get(key)
        if kind is None:
            raise ConfigError(
                f"{at}{where}: {key} is not a numeric TrialConfig key "
                f"(it is {_FIELD_TYPES[key]}); give its values as a [grid] axis instead"
            )
        if not isinstance(r, Mapping):
            raise ConfigError(
                f"{at}{where} must be a table like {{low = 1e-3, high = 1.0, log = true}}"
            )
        _check_keys(r, RANGE_KEYS, at, f"{where}.")
        low, high = r.get("low"), r.get("high")
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"{at}{where}.{name} must be a finite number, got {v!r}")
        if not low < high:
            raise ConfigError(f"{at}{where}: low must be < high, got {low} and {high}")
        log = r.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{at}{where}.log must be true or false")
        if log and low <= 0:
            raise ConfigError(f"{at}{where}: a log range needs low > 0")
        step = r.get("step")
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, int | float) or step <= 0
        ):
            raise ConfigError(f"{at}{where}.step must be a number > 0")
        if step is not None and log:
            raise ConfigError(f"{at}{where}: step and log do not go together")
        integer = (
            isinstance(low, int)
            and isinstance(high, int)
            and (step is None or isinstance(step, int))
        )
        if kind == "int" and not integer:
            raise ConfigError(
                f"{at}{where}: {key} is an integer key, so low, high (and step) must be "
                f"integers, got low = {low!r}, high = {high!r}"
                + ("" if step is None else f", step = {step!r}")
            )
        for name, v in (("low", low), ("high", high)):
            # Each end on its own over the defaults: a bound that no trial could use
            # (accumulation_steps = 0, momentum = 1) is refused now, not per trial.
            try:
                TrialConfig(**{key: v})
            except ConfigError as exc:
                raise ConfigError(f"{at}{where}.{name}: {exc}") from None
        ranges.append(
            Range(key, float(low), float(high), log, None if step is None else float(step), integer)
        )
    return SearchSpec(sampler, n_trials, seed, tuple(ranges)), objectives, constraints


# -- expansion -------------------------------------------------------------------------


def _build(
    base: Mapping[str, Any], case: Mapping[str, Any], values: Mapping[str, Any], seed: int
) -> TrialConfig:
    merged = dict(base)
    options = dict(base.get("workload_options") or {})
    for layer in (case, values):
        layer = _dotted_into(dict(layer))
        if "workload_options" in layer:
            options.update(layer.pop("workload_options"))
        merged.update(layer)
    merged["workload_options"] = options
    merged["seed"] = seed
    if merged.get("epochs") is None and merged.get("max_steps") is None:
        merged["epochs"] = 1
    # SGD and BGD fix the micro-batch (b = 1 / b = N): normalise it so that a batch_size
    # axis crossed with mode does not yield several keys for one training run.
    if merged.get("mode") == "sgd":
        merged["batch_size"] = 1
    elif merged.get("mode") == "bgd":
        merged["batch_size"] = None
    return TrialConfig.from_mapping(merged, where="point")


def _n_train(config: TrialConfig, cache: dict, at: str) -> int:
    """Training-set size N of a config's workload, building each workload once."""
    ident = (
        config.workload,
        json.dumps(dict(config.workload_options), sort_keys=True, default=str),
        config.samples,
    )
    if ident not in cache:
        from bench.workloads import build_workload

        try:
            cache[ident] = build_workload(
                config.workload, samples=config.samples, options=config.workload_options
            ).n_train
        except BenchError as exc:
            cache[ident] = exc
    value = cache[ident]
    if isinstance(value, BenchError):
        raise value
    return value


def _check_workload(name: str, options: Mapping[str, Any], at: str, checked: set) -> None:
    """Unknown workloads and unknown option names are spec errors, not skipped points."""
    ident = (name, tuple(sorted(options)))
    if ident in checked:
        return
    from bench.workloads import workload_options

    try:
        accepted = workload_options(name)
    except BenchError as exc:
        raise ConfigError(f"{at}{exc}") from None
    import inspect

    from bench.workloads import _resolve  # the factory, to see whether it takes **options

    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(_resolve(name)).parameters.values()
    )
    if not takes_any:
        for key in options:
            if key not in accepted:
                raise ConfigError(
                    f"{at}workload {name!r} has no option {key!r}{did_you_mean(key, accepted)}; "
                    f"options: {', '.join(accepted) or 'none'}"
                )
    checked.add(ident)


def _display(value: Any) -> Any:
    """A value Optuna can store as a categorical choice."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def _expand(spec: SweepSpec, at: str, *, check_workloads: bool) -> SweepSpec:
    axis_names = list(spec.axes)
    combos = list(itertools.product(*(spec.axes[a] for a in axis_names))) or [()]
    points: list[Point] = []
    seen: dict[str, Point] = {}
    skipped: list[tuple[dict, str]] = []
    duplicates = 0
    n_cache: dict = {}
    checked: set = set()
    devices_checked: set = set()
    many_cases = len(spec.cases) > 1
    for ci, case in enumerate(spec.cases):
        for combo in combos:
            values = dict(zip(axis_names, combo, strict=True))
            for seed in spec.seeds:
                params: dict[str, Any] = {}
                if many_cases:
                    params["case"] = ci
                params.update({a: _display(v) for a, v in values.items()})
                if len(spec.seeds) > 1:
                    params["seed"] = seed
                try:
                    config = _build(spec.base, case, values, seed)
                except ConfigError as exc:
                    skipped.append((params, str(exc)))
                    continue
                if check_workloads:
                    _check_workload(config.workload, config.workload_options, at, checked)
                    if config.device not in devices_checked:
                        _check_device(config.device, at)
                        devices_checked.add(config.device)
                    try:
                        validate_point(config, n_cache)
                    except ConfigError as exc:
                        skipped.append((params, str(exc)))
                        continue
                key = config.trial_key
                if key in seen:
                    duplicates += 1
                    continue
                shown = {k: _display(v) for k, v in _flat(case).items()}
                shown.update({a: _display(v) for a, v in values.items()})
                if len(spec.seeds) > 1:
                    shown["seed"] = seed
                point = Point(config, params, _describe(shown))
                seen[key] = point
                points.append(point)
    if not points and spec.search is None:
        first = f"; first: {_describe(skipped[0][0])}: {skipped[0][1]}" if skipped else ""
        raise ConfigError(f"{at}every grid point is invalid ({len(skipped)} points){first}")
    if spec.search is not None and not points and not spec.search.ranges:
        first = f"; first: {_describe(skipped[0][0])}: {skipped[0][1]}" if skipped else ""
        raise ConfigError(f"{at}the search space has no valid point{first}")
    spec_hash = _hash(spec, points)
    return SweepSpec(
        **{
            **{f.name: getattr(spec, f.name) for f in fields(spec)},
            "points": tuple(points),
            "skipped": tuple(skipped),
            "duplicates": duplicates,
            "spec_hash": spec_hash,
            "points_by_key": dict(seen),
        }
    )


def validate_point(config: TrialConfig, cache: dict) -> None:
    """Raise ConfigError when a config cannot run: its plan (b > N, k past the epoch ...)."""
    config.plan(_n_train(config, cache, ""))


def _flat(case: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in case.items() if k != "workload_options"}
    out.update(
        {f"workload_options.{k}": v for k, v in (case.get("workload_options") or {}).items()}
    )
    return out


def _check_device(device: str, at: str) -> None:
    if device in ("auto", "cpu"):
        return
    from bench.trial import resolve_device

    try:
        resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(f"{at}{exc}") from None


def _describe(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "(base)"


def _hash(spec: SweepSpec, points: list[Point]) -> str:
    """Identity of what the sweep means: its trials (keys) and how it searches.

    Comments, whitespace and key order do not change it; any change to a trial's
    configuration does (a different trial_key), and so does the search section.
    """
    body = {
        "name": spec.name,
        "keys": sorted(p.key for p in points),
        "objectives": [[o.column, o.direction] for o in spec.objectives],
        "constraints": [[c.column, c.op, c.limit] for c in spec.constraints],
        "memory_cap_bytes": spec.memory_cap_bytes,
        "search": None
        if spec.search is None
        else {
            "sampler": spec.search.sampler,
            "n_trials": spec.search.n_trials,
            "seed": spec.search.seed,
            "ranges": [
                [r.name, r.low, r.high, r.log, r.step, r.integer] for r in spec.search.ranges
            ],
            "axes": {k: [_display(v) for v in vs] for k, vs in spec.axes.items()},
            "cases": len(spec.cases),
            "seeds": list(spec.seeds),
        },
    }
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_point(params: Mapping[str, Any]) -> str:
    return _describe(params)
