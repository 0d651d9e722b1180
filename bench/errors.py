"""Errors that the CLI turns into one line and an exit code, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


class ConfigError(BenchError):
    """A configuration key or value is invalid; the message names the key."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; expected one of: {', '.join(choices)}"
    )
