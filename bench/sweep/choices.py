"""How a sweep's points are named: the values Optuna stores as categorical choices,
the ``k=v`` text of a point, and the readable labels of ``[[cases]]`` entries that are
the study's ``case`` choices (what optuna-dashboard shows)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def display_value(value: Any) -> Any:
    """A value Optuna can store as a categorical choice."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def describe_point(params: Mapping[str, Any]) -> str:
    """``k=v`` pairs; a ``case`` parameter is its label, which already reads so."""
    return " ".join(str(v) if k == "case" else f"{k}={v}" for k, v in params.items()) or "(base)"


def flat_case(case: Mapping[str, Any]) -> dict[str, Any]:
    """A case's settings, workload options as ``workload_options.<name>`` keys."""
    options = (case.get("workload_options") or {}).items()
    return {k: v for k, v in case.items() if k != "workload_options"} | {
        f"workload_options.{k}": v for k, v in options
    }


# optuna-dashboard cuts strings at 1,024 characters; a choice must stay whole to be told
# apart from the others.
CASE_LABEL_MAX = 1024


def case_labels(cases: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Readable names of ``[[cases]]`` entries, one per case, in order: the case's
    settings (``batch_size=64 accumulation_steps=1``; ``(base)`` for an empty one). They
    are Optuna's choices for ``case`` (what the dashboard shows), so each is unique (a
    repeated or over-long one ends in ``[case N]``, N from 1), at most CASE_LABEL_MAX
    characters, and depends on the spec alone. ``labels.index(label)`` maps back."""
    texts = [
        describe_point({k: display_value(v) for k, v in flat_case(case).items()}) for case in cases
    ]
    repeated = {t for t in texts if texts.count(t) > 1}
    labels = [
        _tagged(t, n) if t in repeated or len(t) > CASE_LABEL_MAX else t
        for n, t in enumerate(texts, 1)
    ]
    if len(set(labels)) < len(labels):  # a setting that reads like a tag: number them all
        labels = [_tagged(t, n) for n, t in enumerate(texts, 1)]
    return tuple(labels)


def _tagged(text: str, n: int) -> str:
    tag = f" [case {n}]"
    if len(text) + len(tag) > CASE_LABEL_MAX:
        text = text[: CASE_LABEL_MAX - len(tag) - 1] + "…"
    return text + tag
