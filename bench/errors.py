"""Errors that the CLI turns into one line and an exit code, never a traceback.

Configuration and spec files are validated by pydantic models; :func:`validation_error`
turns pydantic's report into the one line a user reads: the key path, the value and
what the key accepts (``batch_size must be an integer >= 1, got 0``), with a "did you
mean" for names. Nothing here imports pydantic at module level: ``bench plan`` must
start without it.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Custom pydantic error types raised by bench's validators (see ``invalid``).
MESSAGE_ERROR = "bench_message"  # free text: "<path>[.<key>]: <message>"
TYPE_ERROR = "bench_type"  # "<path> must be <what the field accepts>, got <value>"
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


class BenchError(Exception):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


class ConfigError(BenchError):
    """A configuration key or value is invalid; the message names the key."""


@dataclass(frozen=True)
class Accepts:
    """``Annotated`` metadata: what a field accepts, in words, for its error message;
    ``above``: what a value past the field's upper bound is told (``at most 1000``)."""

    text: str
    above: str = ""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; expected one of: {', '.join(choices)}"
    )


def invalid(message: str = "", *, key: str | None = None, as_type: bool = False) -> Exception:
    """An error for a pydantic validator to raise. ``as_type``: the value is not what
    the field accepts (its ``Accepts`` text says what is); else ``message`` is the text,
    shown after the location (extended by ``key``, e.g. a key inside the table)."""
    from pydantic_core import PydanticCustomError

    if as_type:
        return PydanticCustomError(TYPE_ERROR, "invalid value")
    ctx = {"message": message} if key is None else {"message": message, "key": key}
    return PydanticCustomError(MESSAGE_ERROR, "{message}", ctx)


def validation_error(exc: Any, root: Any, *, where: str = "") -> ConfigError:
    """One-line ConfigError from a pydantic ``ValidationError`` raised validating
    ``root`` (a model or pydantic dataclass): the first error, unknown keys first, since
    a misspelt key explains the errors that follow from it."""
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] in _UNKNOWN_KEY), errors[0])
    try:
        text = _message(first, root)
    except Exception:  # noqa: BLE001 - a shape the walk does not know: still one line
        text = f"{key_path(first['loc']) or 'value'}: {first['msg']}"
    return ConfigError(f"{where}: {text}" if where else text)


def key_path(loc: Sequence[Any]) -> str:
    """('grid', 'lr', 0) -> 'grid.lr[0]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out


def _message(error: Mapping[str, Any], root: Any) -> str:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    path = key_path(loc)
    if kind in _UNKNOWN_KEY:
        table = getattr(_unwrap(_walk(root, loc[:-1]))[0], "__pydantic_fields__", {})
        return f"unknown key {path!r}{did_you_mean(str(loc[-1]), table)}"
    if loc and loc[-1] == "[key]":
        return f"{key_path(loc[:-2])} keys must be strings, got {value!r}"
    if kind == MESSAGE_ERROR:
        if "key" in ctx:
            key = str(ctx["key"])
            path = path + key if key.startswith("[") else ".".join(p for p in (path, key) if p)
        return f"{path}: {ctx['message']}" if path else str(ctx["message"])
    if kind == "value_error":
        return f"{path}: {ctx.get('error', error['msg'])}" if path else str(ctx.get("error"))
    annotation = _walk(root, loc)
    accepts = _accepts(annotation)
    accepted = accepts.text if accepts else _plain(annotation)
    if kind in ("less_than_equal", "less_than") and accepts and accepts.above:
        return f"{path} must be {accepts.above}, got {value!r}"
    if kind.startswith("missing"):
        return f"missing key {path!r}" + (f": {accepted}" if accepted else "")
    choices = _choices(annotation)
    if kind == "literal_error" and choices:
        return str(unknown(path, value, choices))
    if kind == "too_short" and isinstance(value, list | dict) and not value:
        return f"{path} is empty: give at least one value"
    if not accepted:
        return f"{path}: {error['msg']}, got {value!r}"
    return f"{path} must be {accepted}, got {value!r}"


def _walk(root: Any, loc: Sequence[Any]) -> Any:
    """The annotation found by following ``loc`` from ``root`` (None if lost)."""
    annotation = root
    for part in loc:
        bare, _ = _unwrap(annotation)
        fields = getattr(bare, "__pydantic_fields__", None)
        origin, args = typing.get_origin(bare), typing.get_args(bare)
        if fields is not None and part in fields:
            annotation = fields[part].rebuild_annotation()
        elif origin in (list, tuple, Sequence) and args:
            annotation = args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            annotation = args[1]
        else:
            return None
    return annotation


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X | None, m1, m2]`` -> (X, [m1, m2]), outer metadata last."""
    metadata: list[Any] = []
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            metadata = [*annotation.__metadata__, *metadata]
            annotation = annotation.__origin__
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation, metadata


def _accepts(annotation: Any) -> Accepts | None:
    _, metadata = _unwrap(annotation)
    return next((m for m in reversed(metadata) if isinstance(m, Accepts)), None)


def _plain(annotation: Any) -> str:
    """What a field without ``Accepts`` takes, from its type."""
    bare, _ = _unwrap(annotation)
    if hasattr(bare, "__pydantic_fields__"):
        return "a table"
    return {bool: "true or false", str: "a string", int: "an integer", float: "a number"}.get(
        bare, ""
    )


def _choices(annotation: Any) -> tuple[str, ...]:
    bare, _ = _unwrap(annotation)
    if typing.get_origin(bare) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(bare))
    return ()
