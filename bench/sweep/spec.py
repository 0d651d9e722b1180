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

The file's shape is :class:`bench.sweep.spec_schema.SpecFile` (also the JSON Schema).

Errors: a bad spec raises :class:`bench.errors.ConfigError` with one line that names
the key (``grid.lr[1]``, ``search.sampler`` ...). Grid *points* that are invalid only in
combination (batch_size > samples, say) are reported and skipped. Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.errors import BenchError, ConfigError, validation_error
from bench.sweep.choices import case_labels, describe_point, display_value, flat_case

if TYPE_CHECKING:  # pydantic loads on use: every command's parser imports this module
    from bench.config import TrialConfig
    from bench.sweep.spec_schema import Constraint, SearchTable


@dataclass(frozen=True)
class Objective:
    column: str  # a numeric trials column
    direction: str  # "maximize" / "minimize"


# A grid sweep's objective when the spec names none: the loss averaged over the last 5 %
# of samples (bench.store.tail_loss). The last step's loss (final_loss) is one
# mini-batch's noise at small batches, so ranking trials by it ranks the noise. It is part
# of the spec hash: a study made under another objective is refused (bench.sweep.study).
DEFAULT_OBJECTIVE = Objective("tail_loss", "minimize")


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
    execution: str = "solo"  # "stacked": bench.stack groups the claimed trials
    max_stack: int = 64

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

    @property
    def case_labels(self) -> tuple[str, ...]:
        """The ``case`` parameter's choices in the Optuna study: see :func:`case_labels`."""
        return case_labels(self.cases)


def count_points(cases: int, axes: Mapping[str, Sequence[Any]], seeds: int) -> tuple[int, str]:
    """Points of cases x grid x seeds, counted without building any, and in words."""
    grid = math.prod(len(v) for v in axes.values())
    total = cases * grid * seeds
    words = f"{total:,} point{'' if total == 1 else 's'}"
    return total, f"{words} (cases x grid x seeds = {cases:,} x {grid:,} x {seeds:,})"


# -- loading ---------------------------------------------------------------------------


def load_spec(path: str | Path, *, check_workloads: bool = True, expand: bool = True) -> SweepSpec:
    """Read, validate and expand a spec file. Raises ConfigError (one line) when bad.
    ``expand=False``: no points yet (walk them with :class:`Expansion`)."""
    from bench.config import read_toml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no spec file at {path}")
    raw = read_toml(path)
    text = path.read_text(encoding="utf-8")
    try:
        return parse_spec(raw, path=path, text=text, check_workloads=check_workloads, expand=expand)
    except BenchError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        # A validation path that missed a shape: still one line, never a traceback.
        raise ConfigError(f"{path}: cannot read the spec: {type(exc).__name__}: {exc}") from None


def header_comment(text: str) -> str:
    """The comment lines at the top of a file, without the '#' (and without editor
    directives such as ``#:schema``)."""
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#:"):
            continue
        if s.startswith("#"):
            lines.append(s.lstrip("#").strip())
        elif s:
            break
        elif lines:
            lines.append("")
    return "\n".join(lines).strip()


def _where(path: Path | None) -> str:
    return f"{path}: " if path else ""


def parse_spec(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    text: str = "",
    check_workloads: bool = True,
    expand: bool = True,
) -> SweepSpec:
    from pydantic import ValidationError

    from bench.sweep.spec_schema import SpecFile, axes_of

    at = _where(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{at}a spec is a TOML table")
    try:
        model = SpecFile.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, SpecFile, where=str(path or "")) from None
    except ConfigError as exc:  # a size that cannot be read
        raise ConfigError(f"{at}{exc}") from None
    question = header_comment(text) or model.description
    if not question:
        raise ConfigError(
            f"{at}the spec must start with a comment (or set 'description') saying what question it answers"
        )
    # The layers keep the file's values as written (1 stays 1 in a label and in Optuna's
    # choices); the models above have checked them.
    layer: dict[str, Any] = {
        "workload": model.workload.name,
        "workload_options": dict(model.workload.options),
        **raw.get("base", {}),
        **raw.get("budget", {}),
        "device": model.device,
    }
    _dotted_into(layer)
    _check_value_types(layer, at, "base")
    cases = [_dotted_into(dict(case)) for case in raw.get("cases", [])]
    for i, case in enumerate(cases):
        _check_value_types({**layer, **case}, at, f"cases[{i}]")
    axes = {axis: tuple(values) for axis, values in axes_of(raw.get("grid", {})).items()}
    size, words = count_points(len(cases) or 1, axes, len(model.seeds))
    if size > model.max_points:  # counted, not built: a product can outgrow any memory
        limit = f"max_points = {model.max_points:,}"
        advice = "narrow the grid, split the spec, or raise max_points (a top-level key)"
        raise ConfigError(f"{at}the spec has {words}, more than {limit}: {advice}")
    for axis, values in axes.items():
        for j, v in enumerate(values):
            # Each value must be valid on its own; only combinations may be skipped.
            _check_value_types({**layer, **_dotted_into({axis: v})}, at, f"grid.{axis}[{j}]")
    search, objectives, constraints = _search(model.search, raw.get("search", {}))
    spec = SweepSpec(
        name=model.name,
        path=path or Path("<spec>"),
        question=question,
        device=model.device,
        memory_cap_bytes=model.memory_cap,
        execution=model.execution,
        max_stack=model.max_stack,
        seeds=tuple(model.seeds),
        base=layer,
        cases=tuple(cases) or ({},),
        axes=axes,
        points=(),
        skipped=(),
        duplicates=0,
        objectives=tuple(objectives) or (DEFAULT_OBJECTIVE,),
        constraints=tuple(constraints),
        search=search,
    )
    return _expand(spec, at, check_workloads=check_workloads) if expand else spec


def _search(
    s: SearchTable | None, raw: Mapping[str, Any]
) -> tuple[SearchSpec | None, list[Objective], list[Constraint]]:
    from bench.sweep.spec_schema import RANGE_KINDS, parse_constraint

    if s is None:
        return None, [], []
    objectives = [Objective(c, d) for d in ("maximize", "minimize") for c in getattr(s, d)]
    constraints = [parse_constraint(text) for text in s.constraints]
    ranges = []
    for key in raw.get("ranges", {}):  # the file's order: Optuna samples in it
        r = getattr(s.ranges, key)
        integer = RANGE_KINDS[key] == "int"
        ranges.append(Range(key, r.low, r.high, r.log, r.step, integer))
    return SearchSpec(s.sampler, s.n_trials, s.seed, tuple(ranges)), objectives, constraints


def _dotted_into(d: dict[str, Any]) -> dict[str, Any]:
    """Move 'workload_options.x' keys into the workload_options table (in place)."""
    from bench.sweep.spec_schema import OPTION_PREFIX

    dotted = [k for k in d if isinstance(k, str) and k.startswith(OPTION_PREFIX)]
    if dotted:
        options = dict(d.get("workload_options") or {})
        for k in dotted:
            options[k.removeprefix(OPTION_PREFIX)] = d.pop(k)
        d["workload_options"] = options
    return d


def _check_value_types(values: Mapping[str, Any], at: str, where: str) -> None:
    """Build a TrialConfig from ``values`` alone: keys valid one by one can still clash
    (patience with eval_every = 0)."""
    from bench.config import TrialConfig

    probe = dict(values)
    if probe.get("epochs") is None and probe.get("max_steps") is None:
        probe.setdefault("epochs", 1)
    try:
        TrialConfig.from_mapping(probe, where=where)
    except ConfigError as exc:
        raise ConfigError(f"{at}{exc}") from None


# -- expansion -------------------------------------------------------------------------


def _build(
    base: Mapping[str, Any], case: Mapping[str, Any], values: Mapping[str, Any], seed: int
) -> TrialConfig:
    from bench.config import TrialConfig

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


def _n_train(config: TrialConfig, cache: dict) -> int:
    """Training-set size N of a config's workload, each workload and options once. Data
    too large for memory is bad input here, as for ``bench run`` (in a trial, an oom). A
    built-in workload is sized without torch (``bench.workloads.declared``): the
    coordinator trains nothing, and its forkserver is importing torch meanwhile."""
    options = json.dumps(dict(config.workload_options), sort_keys=True, default=str)
    ident = (config.workload, options, config.samples)
    if ident not in cache:
        from bench.workloads import training_samples

        try:
            cache[ident] = training_samples(
                config.workload, config.samples, config.workload_options
            )
        except BenchError as exc:
            cache[ident] = exc
    if isinstance(cache[ident], BenchError):
        raise cache[ident]
    return cache[ident]


def _check_workload(name: str, options: Mapping[str, Any], at: str, checked: set) -> None:
    """Unknown workloads and unknown option names are spec errors, not skipped points."""
    ident = (name, tuple(sorted(options)))
    if ident in checked:
        return
    from bench.workloads import check_options

    try:
        check_options(name, options)
    except BenchError as exc:
        raise ConfigError(f"{at}{exc}") from None
    checked.add(ident)


class Skipped(NamedTuple):
    """A point invalid only in combination (b > N, say): listed, not run."""

    params: Mapping[str, Any]
    reason: str


class Expansion:
    """Walks cases x grid x seeds one point at a time, building each as it goes: a
    listing starts at once, and memory holds trial keys, not every config. Yields a
    :class:`Point` per new trial key and a :class:`Skipped` per invalid point (a repeated
    key counts in ``duplicates``); then :meth:`check` refuses a spec with nothing valid."""

    def __init__(self, spec: SweepSpec, at: str = "", *, check_workloads: bool = True) -> None:
        self.spec, self.at, self.check_workloads = spec, at, check_workloads
        self.keys: set[str] = set()
        self.duplicates = self.skipped = 0
        self.first_skipped: Skipped | None = None
        self._built: dict = {}  # workload sizes, by workload and options
        self._checked: set = set()  # workloads and devices found to exist
        self.labels = spec.case_labels

    def __iter__(self) -> Iterator[Point | Skipped]:
        names = list(self.spec.axes)
        for ci, case in enumerate(self.spec.cases):
            for combo in itertools.product(*(self.spec.axes[a] for a in names)):
                for seed in self.spec.seeds:
                    item = self._point(ci, case, dict(zip(names, combo, strict=True)), seed)
                    if isinstance(item, Skipped):
                        self.skipped += 1
                        self.first_skipped = self.first_skipped or item
                    elif item.key in self.keys:
                        self.duplicates += 1
                        continue
                    else:
                        self.keys.add(item.key)
                    yield item

    def _point(self, ci: int, case: Mapping, values: dict, seed: int) -> Point | Skipped:
        seeds = {"seed": seed} if len(self.spec.seeds) > 1 else {}
        params = {"case": self.labels[ci]} if len(self.spec.cases) > 1 else {}
        params |= {a: display_value(v) for a, v in values.items()} | seeds
        try:
            config = _build(self.spec.base, case, values, seed)
        except ConfigError as exc:
            return Skipped(params, str(exc))
        if self.check_workloads:  # an unknown workload, option or device: a bad spec
            _check_workload(config.workload, config.workload_options, self.at, self._checked)
            if ("device", config.device) not in self._checked:
                _check_device(config.device, self.at)
                self._checked.add(("device", config.device))
            try:
                validate_point(config, self._built)
            except ConfigError as exc:
                return Skipped(params, str(exc))
        shown = {k: display_value(v) for k, v in {**flat_case(case), **values}.items()}
        return Point(config, params, describe_point(shown | seeds))

    def check(self) -> None:
        """ConfigError when a grid has no valid point, or a search nothing to choose."""
        first = self.first_skipped
        first = f"; first: {describe_point(first.params)}: {first.reason}" if first else ""
        if not self.keys and self.spec.search is None:
            raise ConfigError(
                f"{self.at}every grid point is invalid ({self.skipped} points){first}"
            )
        if self.spec.search is not None and not self.keys and not self.spec.search.ranges:
            raise ConfigError(f"{self.at}the search space has no valid point{first}")

    @property
    def spec_hash(self) -> str:
        return _hash(self.spec, self.keys)


def _expand(spec: SweepSpec, at: str, *, check_workloads: bool) -> SweepSpec:
    walk = Expansion(spec, at, check_workloads=check_workloads)
    items = list(walk)
    walk.check()
    points = [p for p in items if isinstance(p, Point)]
    return dataclasses.replace(
        spec,
        points=tuple(points),
        skipped=tuple(tuple(p) for p in items if isinstance(p, Skipped)),
        duplicates=walk.duplicates,
        spec_hash=walk.spec_hash,
        points_by_key={p.key: p for p in points},
    )


def validate_point(config: TrialConfig, cache: dict) -> None:
    """Raise ConfigError when a config cannot run: its plan (b > N, k past the epoch ...)."""
    config.plan(_n_train(config, cache))


def _check_device(device: str, at: str) -> None:
    if device in ("auto", "cpu"):
        return
    from bench.trial import resolve_device

    try:
        resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(f"{at}{exc}") from None


def hash_with_objectives(spec: SweepSpec, objectives: Iterable[Objective]) -> str:
    """The spec hash ``spec`` would have with other objectives: tells a study that differs
    from the spec only in its objective (a grid spec that names none) from one whose
    trials differ."""
    return _hash(dataclasses.replace(spec, objectives=tuple(objectives)), spec.points_by_key)


def _hash(spec: SweepSpec, keys: Iterable[str]) -> str:
    """Identity of what the sweep means: its trials (keys) and how it searches.

    Comments, whitespace and key order do not change it; any change to a trial's
    configuration does (a different trial_key), and so does the search section.
    """
    body = {
        "name": spec.name,
        "keys": sorted(keys),
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
            "axes": {k: [display_value(v) for v in vs] for k, vs in spec.axes.items()},
            "cases": len(spec.cases),
            "seeds": list(spec.seeds),
        },
    }
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
