"""Workload registry: name -> factory, plus ``module:function`` for your own.

A factory takes ``samples`` (N, or None for its default) and its own keyword options and
returns a :class:`bench.workloads.base.Workload`.

Importing this module, checking a built-in's options and sizing its data import no torch
(:mod:`bench.workloads.declared`): a sweep's coordinator does all three for every point.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, ConfigError, did_you_mean, unknown
from bench.workloads.declared import DECLARED

if TYPE_CHECKING:  # base imports torch
    from bench.workloads.base import Workload

BUILTIN = {
    "seed-mlp": "bench.workloads.seed_mlp:build",
    "teacher-mlp": "bench.workloads.teacher_mlp:build",
    "char-lm": "bench.workloads.char_lm:build",
    "resnet": "bench.workloads.resnet:build",
}


def resolve(name: str) -> Callable[..., Workload]:
    """The factory of a built-in workload or of ``module:function``."""
    target = BUILTIN.get(name)
    if target is None:
        if ":" not in name:
            raise unknown("workload", name, BUILTIN)
        target = name
    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name or module_name.startswith("."):
        raise ConfigError(f"workload {name!r}: expected module:function, e.g. mypkg.loads:build")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the user's module raises on import
        raise ConfigError(
            f"workload {name!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError(f"workload {name!r}: {module_name} has no function {func_name!r}")
    return factory


def _signature_source(name: str) -> Callable[..., Any]:
    """What tells a workload's options: a built-in's torch-free checker (its factory takes
    the same keywords), else the factory itself."""
    return DECLARED.get(name) or resolve(name)


def workload_options(name: str) -> dict[str, Any]:
    """The options a workload accepts, with their defaults."""
    params = inspect.signature(_signature_source(name)).parameters
    return {p.name: p.default for p in params.values() if p.name != "samples"}


def check_options(
    name: str, options: Mapping[str, Any], factory: Callable[..., Workload] | None = None
) -> None:
    """Raise ConfigError naming an option the workload's factory does not take (any
    option passes a factory that takes ``**options``)."""
    params = inspect.signature(factory or _signature_source(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p != "samples"]
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f"workload {name!r} has no option {key!r}{did_you_mean(key, accepted)}; "
                f"options: {', '.join(accepted) or 'none'}"
            )


def data_does_not_fit(name: str, exc: BaseException) -> ConfigError:
    """The one line for a workload whose data cannot be built in this machine's memory
    (``bench run``, and a spec's points, which build it to know N)."""
    from bench.failures import describe

    return ConfigError(f"workload {name!r}: its data does not fit in memory: {describe(exc)}")


def training_samples(name: str, samples: int | None, options: Mapping[str, Any]) -> int:
    """N, the training-set size a workload builds with these options. A built-in's is
    checked without building it (no torch, no data: the options' values are checked, and
    data larger than this machine's memory is refused as building it would be); another
    workload is built. Raises ConfigError as :func:`build_workload` does."""
    checker = DECLARED.get(name)
    if checker is None:
        try:
            return build_workload(name, samples=samples, options=options).n_train
        except BenchError:
            raise
        except Exception as exc:
            from bench.failures import is_oom

            if not is_oom(exc):
                raise
            raise data_does_not_fit(name, exc) from None
    options = dict(options)
    check_options(name, options, checker)
    checked = checker(samples=samples, **options)
    reason = checked.too_large()
    if reason is not None:
        raise data_does_not_fit(name, MemoryError(reason))
    return checked.n_train


def build_workload(
    name: str, *, samples: int | None = None, options: Mapping[str, Any] | None = None
) -> Workload:
    factory = resolve(name)
    options = dict(options or {})
    check_options(name, options, factory)
    try:
        workload = factory(samples=samples, **options)
    except TypeError as exc:
        raise ConfigError(f"workload {name!r}: {exc}") from None
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - its data cannot be made (a bug): input
        from bench.failures import describe, is_oom

        if is_oom(exc):  # out of memory is a result (a capped worker's or probe's oom)
            raise
        raise ConfigError(f"workload {name!r} cannot be built: {describe(exc)}") from None
    from bench.workloads.base import Workload

    if not isinstance(workload, Workload):
        raise ConfigError(
            f"workload {name!r}: factory returned {type(workload).__name__}, not a Workload"
        )
    return workload
