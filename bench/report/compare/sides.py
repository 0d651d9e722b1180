"""The two sides of ``bench compare``: a results folder loaded, its trials keyed by
configuration without the seed and without keys at their ``TrialConfig`` default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import TrialConfig
from bench.errors import BenchError
from bench.report import memory
from bench.report.prepare import Prepared, config_dict, config_id_of, prepare
from bench.store import load_results


@dataclass
class Side:
    prep: Prepared
    config_keys: set[str]  # every key of the matching configs (for the diagnostics)


def config_defaults() -> dict[str, Any]:
    """The current ``TrialConfig`` default of every field (``default_factory`` called)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrialConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _is_default(value: Any, default: Any) -> bool:
    # True == 1 in Python, but a flag and a count are different settings.
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def matching_config(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys at their TrialConfig default: an older result that
    lacks a field added since, at its default, then matches a newer one. Float fields are
    compared as floats: results from before TrialConfig coerced them hold TOML's ints
    (``time_limit_s = 600``), and 600 and 600.0 are one setting."""
    from bench.config import floats_as_floats

    config = floats_as_floats(config)
    return {k: v for k, v in config.items() if not (k in defaults and _is_default(v, defaults[k]))}


def load_side(folder: str | Path, what: str) -> Side:
    """``folder``'s results with ``config_id`` re-keyed by ``matching_config``; ``what``
    (baseline, candidate) names the side in errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"{what}: no results folder at {folder}")
    results = load_results(folder)
    if not len(results.trials):
        raise BenchError(f"{what}: results at {folder} are empty (no trial rows)")
    prep = prepare(results)
    # A change of the memory a trial adds counts only beyond its counter's step: a few
    # pages of RSS against a baseline that added none is an infinite ratio of nothing.
    memory.add_steps(prep.trials, memory.cpu_count(folder))
    # prepare's config_id hashes every key, so a field added at its default would change
    # every id; compare matches on the config without its defaulted keys instead.
    defaults = config_defaults()
    configs = [matching_config(config_dict(r), defaults) for _, r in prep.trials.iterrows()]
    ids = [config_id_of(d) for d in configs]
    renamed = dict(zip(prep.trials["config_id"], ids, strict=True))
    prep.trials["config_id"] = ids
    prep.configs["config_id"] = prep.configs["config_id"].map(renamed)
    prep.configs = prep.configs.drop_duplicates("config_id").reset_index(drop=True)
    return Side(prep, {k for d in configs for k in d})


def one_side_keys(b: Side, c: Side) -> str:
    """'pin_memory (candidate only)' etc.: the usual reason two result sets do not match."""
    parts = [f"{k} (baseline only)" for k in sorted(b.config_keys - c.config_keys)]
    parts += [f"{k} (candidate only)" for k in sorted(c.config_keys - b.config_keys)]
    return ", ".join(parts)


def describe(folder: str | Path, prep: Prepared) -> str:
    return f"{folder} ({len(prep.trials)} trials, {len(prep.configs)} configurations)"
