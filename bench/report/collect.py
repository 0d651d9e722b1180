"""Several results folders of one sweep, read as one table.

A sweep shared through one Optuna storage (``bench sweep SPEC --storage URL`` on several
hosts) leaves each host a ``results/<sweep>/`` with the trials it ran. Gathered on one
machine (rsync, or a shared filesystem), :func:`gather` reads them as one sweep with one
row per ``trial_key``. A key found in more than one folder is either

- the same trial seen twice (a shared filesystem mounted on two hosts, a folder copied
  into another): the rows agree in every column of :data:`RESULT_COLUMNS`, and the key
  is one row, silently; or
- two runs of one configuration (run again on another host after its claim was taken
  over, ``--retry-failed`` there, two studies of one spec): the rows differ, and the key
  is a :class:`Conflict`. Which run to report is the user's choice (``prefer``), never a
  silent pick.

Folders of different sweeps (another sweep name, or another spec hash in the rows'
``extra``) are refused: trial keys hash configurations, not questions, so one key may
belong to two specs that ask different things.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import records
from bench.errors import BenchError
from bench.store import Results, load_results

# Left out when two rows of one key are compared, because they do not describe the
# result: free text and detail that may hold a host's own paths (a worker log, a results
# folder; ``extra`` also holds the spec hash, checked on its own), the sweep's name
# (checked on its own), and ``schema_version``: files of any version load as the current
# schema, so a trial rewritten by a newer bench on one host only is not another result.
NOT_COMPARED = ("trial_key", "sweep", "error", "notes", "extra", "schema_version")
RESULT_COLUMNS = tuple(c for c in records.columns(records.TrialRecord) if c not in NOT_COMPARED)

# How a conflict is settled: keep the run that started last, or the row of the folder
# given first (the host whose results one trusts).
PREFER_RULES = ("newest", "first")


def trials_text(n: int) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} trial" if n == 1 else f"{n} trials"


# How many differing columns a conflict line names before "and N more".
SHOWN_COLUMNS = 4


@dataclass(frozen=True)
class Conflict:
    """One trial key whose rows differ between folders."""

    key: str
    folders: tuple[Path, ...]  # one per distinct row, in the order the folders were given
    columns: tuple[str, ...]  # compared columns whose values differ
    kept: Path | None = None  # the folder whose row a ``prefer`` rule kept

    def line(self) -> str:
        cols = ", ".join(self.columns[:SHOWN_COLUMNS])
        if len(self.columns) > SHOWN_COLUMNS:
            cols += f" and {len(self.columns) - SHOWN_COLUMNS} more"
        where = " and ".join(str(f) for f in self.folders)
        kept = f"; kept {self.kept}" if self.kept is not None else ""
        return f"trial {self.key} differs between {where} ({cols}){kept}"


@dataclass
class Collected:
    """Folders read as one sweep: ``results`` has one row per trial key."""

    folders: tuple[Path, ...]
    results: Results
    sweep: str | None
    spec_hash: str | None
    per_folder: dict[Path, int] = field(default_factory=dict)  # rows each folder gave
    duplicates: int = 0  # rows that repeated another folder's row exactly
    conflicts: list[Conflict] = field(default_factory=list)
    prefer: str | None = None

    def notes(self) -> list[str]:
        """What the report says about where its rows came from (several folders only)."""
        if len(self.folders) < 2:
            return []
        parts = ", ".join(f"{f} ({n})" for f, n in self.per_folder.items())
        text = f"trials from {len(self.folders)} folders: {parts}"
        if self.duplicates:
            text += (
                f"; {self.duplicates} rows seen in more than one folder, identical, counted once"
            )
        out = [text]
        if self.conflicts:
            out.append(
                f"{trials_text(len(self.conflicts))} with rows that differ between folders "
                f"(two runs of one configuration); kept by --prefer {self.prefer}: "
                + "; ".join(c.line() for c in self.conflicts)
            )
        return out


def gather(folders: list[Path], *, prefer: str | None = None) -> Collected:
    """Read ``folders`` as one sweep. Conflicts are settled by ``prefer`` (one of
    :data:`PREFER_RULES`); without it they are listed in ``conflicts`` and the row of the
    first folder stands in: a caller must refuse them."""
    if prefer is not None and prefer not in PREFER_RULES:
        raise ValueError(f"prefer must be one of {PREFER_RULES}, got {prefer!r}")
    folders = tuple(dict.fromkeys(Path(f) for f in folders))  # a folder given twice: once
    loaded = [load_results(f) for f in folders]
    sweep, spec_hash = one_sweep(folders, [r.trials for r in loaded])
    if len(folders) == 1:  # one file per key: nothing to settle, and no copy of the steps
        n = len(loaded[0].trials)
        return Collected(folders, loaded[0], sweep, spec_hash, {folders[0]: n}, prefer=prefer)
    rows = pd.concat([r.trials.assign(_folder=i) for i, r in enumerate(loaded)], ignore_index=True)
    keep, duplicates, conflicts = _settle(rows, folders, prefer)
    chosen = rows.loc[keep]
    steps = []
    for i, r in enumerate(loaded):
        keys = set(chosen.loc[chosen["_folder"] == i, "trial_key"])
        whole = keys == set(r.trials["trial_key"])  # no row of it dropped: no filtering copy
        steps.append(r.steps if whole else r.steps[r.steps["trial_key"].isin(keys)])
    trials = chosen.drop(columns="_folder").reset_index(drop=True)
    counts = chosen["_folder"].value_counts()
    return Collected(
        folders=folders,
        results=Results(trials=trials, steps=pd.concat(steps, ignore_index=True)),
        sweep=sweep,
        spec_hash=spec_hash,
        per_folder={f: int(counts.get(i, 0)) for i, f in enumerate(folders)},
        duplicates=duplicates,
        conflicts=conflicts,
        prefer=prefer,
    )


def spec_hashes(trials: pd.DataFrame) -> set[str]:
    """The spec hashes that rows carry in ``extra`` (sweep rows; none before it existed)."""
    found = set()
    for raw in trials["extra"].dropna().unique() if "extra" in trials else ():
        try:
            value = json.loads(raw).get("spec_hash")
        except (ValueError, AttributeError):
            continue
        if value:
            found.add(str(value))
    return found


def one_sweep(
    folders: tuple[Path, ...], trials: list[pd.DataFrame]
) -> tuple[str | None, str | None]:
    """The one sweep (name, spec hash) the folders hold; BenchError naming two folders
    that hold different ones. A folder without a sweep name is a ``bench run``'s."""
    names = [frozenset(t["sweep"].dropna().unique()) or frozenset([None]) for t in trials]
    hashes = [spec_hashes(t) for t in trials]
    if len(folders) > 1:
        for i in range(1, len(folders)):
            if names[i] != names[0]:
                raise BenchError(
                    f"{folders[0]} holds {_names(names[0])} and {folders[i]} {_names(names[i])}: "
                    "one report reads one sweep; report each folder on its own"
                )
        every = set().union(*hashes)
        if len(every) > 1:
            by = ", ".join(
                f"{'/'.join(sorted(h)) or 'none'} in {f}"
                for f, h in zip(folders, hashes, strict=True)
            )
            raise BenchError(
                f"the folders hold different specs of {_names(names[0])} (spec hash {by}): "
                "a changed spec is another sweep; report each folder on its own"
            )
    name = next(iter(names[0])) if len(names[0]) == 1 else None
    every = sorted(set().union(*hashes))
    return name, (every[0] if len(every) == 1 else None)


def _names(names: frozenset) -> str:
    if names == frozenset([None]):
        return "a bench run (no sweep)"
    shown = ", ".join(f"'{n}'" for n in sorted(names))
    return f"sweep {shown}" if len(names) == 1 else f"sweeps {shown}"


def _settle(
    rows: pd.DataFrame, folders: tuple[Path, ...], prefer: str | None
) -> tuple[list[int], int, list[Conflict]]:
    """(index of the row kept per key, identical repeats dropped, conflicts)."""
    repeated = rows["trial_key"].duplicated(keep=False)
    keep = list(rows.index[~repeated])
    duplicates = 0
    conflicts = []
    for key, group in rows[repeated].groupby("trial_key", sort=True):
        distinct: list[int] = []  # the first row of each distinct version, in folder order
        differ: set[str] = set()
        for idx in group.index:
            diffs = [_differing(rows, idx, d) for d in distinct]
            if not all(diffs):  # equal to a row already seen: the same trial again
                duplicates += 1
                continue
            differ.update(*diffs)
            distinct.append(idx)
        if len(distinct) == 1:
            keep.append(distinct[0])
            continue
        chosen = _choose(rows, distinct, prefer)
        keep.append(chosen)
        conflicts.append(
            Conflict(
                key=str(key),
                folders=tuple(folders[rows.at[i, "_folder"]] for i in distinct),
                columns=tuple(c for c in RESULT_COLUMNS if c in differ),
                kept=folders[rows.at[chosen, "_folder"]] if prefer else None,
            )
        )
    return sorted(keep), duplicates, conflicts


def _differing(rows: pd.DataFrame, a: int, b: int) -> list[str]:
    return [c for c in RESULT_COLUMNS if c in rows and not _same(rows.at[a, c], rows.at[b, c])]


def _choose(rows: pd.DataFrame, candidates: list[int], prefer: str | None) -> int:
    if prefer != "newest":
        return candidates[0]  # "first", or unsettled: the caller refuses
    started = pd.to_datetime(rows.loc[candidates, "started_at"], utc=True, errors="coerce")
    if started.isna().all():
        return candidates[0]
    return int(started.idxmax())  # the first of equal newest, in folder order


def _same(a: object, b: object) -> bool:
    a_null, b_null = _is_null(a), _is_null(b)
    if a_null or b_null:
        return a_null and b_null
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _is_null(value: object) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: not a scalar null
        return False
