"""Cross-checks gathered results folders against the sweep's Optuna study: which trials
finished (their row recorded: ``bench_status`` set) on a host whose folder was not given.

A coordinator writes a trial's parquet rows, then its ``bench_row``/``bench_status``/
``bench_key`` user attributes (:mod:`bench.sweep.recorder`), so every recorded key is in
some host's folder. The host is the one that claimed the trial: its ``bench_owner``
system attribute is ``<hostname, first 24 characters>-<pid>-<random>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError

# How many keys a host's entry names before "and N more".
SHOWN_KEYS = 5


@dataclass(frozen=True)
class Unseen:
    """A trial recorded in the study whose key is in no folder given."""

    key: str
    host: str | None
    status: str
    number: int  # the Optuna trial number


def open_study(url: str, sweep: str) -> Any:
    """The sweep's study (named as the sweep) in ``url`` (``bench sweep --storage``'s
    forms), read only; BenchError naming what is wrong."""
    import optuna

    from bench.sweep.storage import parse_storage, redact

    kind, target = parse_storage(url, Path("."))
    if kind == "journal":
        if not Path(target).is_file():
            raise BenchError(f"--storage: no journal file at {target}")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(target))
    else:
        try:
            storage = optuna.storages.RDBStorage(target, skip_table_creation=True)
        except Exception as exc:  # noqa: BLE001 - refused connection, bad credentials, no driver
            text = " ".join(str(exc).split())[:300]
            raise BenchError(f"--storage: cannot open {redact(url)}: {text}") from None
    try:
        return optuna.load_study(study_name=sweep, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        shown = ", ".join(names[:8]) or "none"
        raise BenchError(
            f"--storage {redact(url)} has no study '{sweep}' (the sweep's name; studies: {shown})"
        ) from None


def unseen_trials(study: Any, keys: Iterable[str], spec_hash: str | None) -> list[Unseen]:
    """Trials the study recorded (one per key: the last recorded) whose key is not in
    ``keys``. Refuses a study of another spec than the folders' (``spec_hash``)."""
    found = study.user_attrs.get("bench_spec_hash")
    if spec_hash is not None and found is not None and found != spec_hash:
        raise BenchError(
            f"--storage: study '{study.study_name}' holds spec hash {found}, the folders "
            f"{spec_hash}: they are not results of this study"
        )
    have = set(keys)
    last: dict[str, Unseen] = {}
    for t in study.get_trials(deepcopy=False):
        key, status = t.user_attrs.get("bench_key"), t.user_attrs.get("bench_status")
        if not key or not status or key in have:
            continue
        owner = t.system_attrs.get("bench_owner")
        host = str(owner).rsplit("-", 2)[0] if owner and str(owner).count("-") >= 2 else None
        last[key] = Unseen(key=str(key), host=host, status=str(status), number=t.number)
    return sorted(last.values(), key=lambda u: (u.host or "", u.number))


def unseen_line(unseen: list[Unseen]) -> str:
    """'3 trials finished on another host whose folder was not given: vm-b (2: k1, k2),
    vm-c (1: k3)'."""
    by_host: dict[str | None, list[Unseen]] = {}
    for u in unseen:
        by_host.setdefault(u.host, []).append(u)
    parts = []
    for host, items in by_host.items():
        keys = ", ".join(u.key for u in items[:SHOWN_KEYS])
        if len(items) > SHOWN_KEYS:
            keys += f" and {len(items) - SHOWN_KEYS} more"
        parts.append(f"{host or 'host not recorded'} ({len(items)}: {keys})")
    n = len(unseen)
    noun = "trial" if n == 1 else "trials"
    return f"{n} {noun} finished on another host whose folder was not given: " + "; ".join(parts)
