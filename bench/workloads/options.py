"""Validation helpers for workload options: errors name the option and the value."""

from __future__ import annotations

import math

from bench.errors import ConfigError


def check_int(key: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"workload option {key} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"workload option {key} must be {bound}, got {value}")
    return value


def check_float(key: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"workload option {key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"workload option {key} must be in [{lo}, {hi}], got {value}")
    return float(value)
