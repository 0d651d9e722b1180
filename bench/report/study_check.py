"""Cross-checks gathered results folders against the sweep's Optuna study: which trials
finished (their row recorded: ``bench_status`` set) on a host whose folder was not given.

A coordinator writes a trial's parquet rows, then its ``bench_row``/``bench_status``/
``bench_key``/``bench_folder`` user attributes (:mod:`bench.sweep.recorder`), so every
recorded key is in some host's folder, ``bench_folder``. The host is the one that
claimed the trial: its ``bench_owner`` system attribute is ``<hostname, first 24
characters>-<pid>-<random>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.report.collect import trials_text
from bench.report.prepare import STATUSES

# How many keys a host's entry names before "and N more".
SHOWN_KEYS = 5


@dataclass(frozen=True)
class Recorded:
    """A trial key the study recorded (its last recorded trial)."""

    key: str
    host: str | None
    status: str
    number: int  # the Optuna trial number
    folder: str | None = None  # the results folder its coordinator wrote the rows to


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
            # Optuna wraps the driver's error ("connection refused") in a generic one.
            text = " ".join(str(exc.__cause__ or exc).split())[:300]
            raise BenchError(f"--storage: cannot open {redact(url)}: {text}") from None
    try:
        return optuna.load_study(study_name=sweep, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        shown = ", ".join(names[:8]) or "none"
        raise BenchError(
            f"--storage {redact(url)} has no study '{sweep}' (the sweep's name; studies: {shown})"
        ) from None


def recorded_trials(study: Any, spec_hash: str | None) -> dict[str, Recorded]:
    """Per trial key, the study's last trial that recorded a result (``bench_status`` one
    of ok, oom, diverged, failed). Refuses a study of another
    spec than the folders' (``spec_hash``)."""
    found = study.user_attrs.get("bench_spec_hash")
    if spec_hash is not None and found is not None and found != spec_hash:
        raise BenchError(
            f"--storage: study '{study.study_name}' holds spec hash {found}, the folders "
            f"{spec_hash}: they are not results of this study"
        )
    last: dict[str, Recorded] = {}
    for t in study.get_trials(deepcopy=False):
        key, status = t.user_attrs.get("bench_key"), t.user_attrs.get("bench_status")
        if not key or status not in STATUSES:  # "lost", "interrupted": not a result
            continue
        owner = t.system_attrs.get("bench_owner")
        host = str(owner).rsplit("-", 2)[0] if owner and str(owner).count("-") >= 2 else None
        folder = t.user_attrs.get("bench_folder")
        last[str(key)] = Recorded(str(key), host, str(status), t.number, folder)
    return last


def trial_numbers(study: Any) -> dict[str, set[int]]:
    """Per trial key, the numbers of every trial of the study that ran it, whatever
    became of it (a row may outlive its trial's record: "lost" after the row)."""
    numbers: dict[str, set[int]] = {}
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("bench_key")
        if key:
            numbers.setdefault(str(key), set()).add(t.number)
    return numbers


def cross_check(
    study: Any, rows: Iterable[tuple[str, int | None]], spec_hash: str | None
) -> list[str]:
    """Lines on how the folders' rows, (trial_key, optuna_trial) each, and the study's
    recorded trials differ; one that says they agree when they do."""
    recorded = recorded_trials(study, spec_hash)
    rows = list(rows)
    have = {key for key, _ in rows}
    unseen = sorted(
        (r for k, r in recorded.items() if k not in have), key=lambda r: (r.host or "", r.number)
    )
    lines = [unseen_line(unseen)] if unseen else []
    unrecorded = len(have - set(recorded))
    if unrecorded:
        lines.append(
            f"{trials_text(unrecorded)} of the folders not recorded in the study (a coordinator "
            "stopped between writing the row and recording it; the sweep runs them again)"
        )
    # A row names the Optuna trial that ran it: none of its key's trials in this study
    # means another study wrote it (the same spec on another storage, or a study deleted
    # and made again). Two studies of one spec number their first trials alike, so this
    # catches them only where their numbering parted (a retry, a lost trial).
    numbers = trial_numbers(study)
    foreign = sum(
        1
        for key, number in rows
        if key in numbers and _known(number) and int(number) not in numbers[key]
    )
    if foreign:
        lines.append(
            f"{trials_text(foreign)} of the folders ran under another study than this one "
            "(their Optuna trial numbers are not this study's trials of their keys): is "
            "--storage the storage the sweep ran on?"
        )
    if not lines:
        lines.append(
            f"--storage: the {len(recorded)} trials the study recorded are all in the folders given"
        )
    return lines


def _known(number: Any) -> bool:
    try:
        return number is not None and number == number  # NaN from a column of nulls
    except (TypeError, ValueError):
        return False


def unseen_line(unseen: list[Recorded]) -> str:
    """'3 trials finished on another host whose folder was not given: gpu-b:/home/u/results/s
    (2: k1, k2); gpu-c (1: k3)': host and folder as rsync takes them, where recorded."""
    by_place: dict[str, list[Recorded]] = {}
    for u in unseen:
        place = u.host or "host not recorded"
        if u.folder:
            place += f":{u.folder}"
        by_place.setdefault(place, []).append(u)
    parts = []
    for place, items in by_place.items():
        keys = ", ".join(u.key for u in items[:SHOWN_KEYS])
        if len(items) > SHOWN_KEYS:
            keys += f" and {len(items) - SHOWN_KEYS} more"
        parts.append(f"{place} ({len(items)}: {keys})")
    head = f"{trials_text(len(unseen))} finished on another host whose folder was not given: "
    return head + "; ".join(parts)
