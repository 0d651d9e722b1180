"""Which results a folder holds: one sweep or run, several sweeps side by side (such as
``results/`` with ``results/seed/`` and ``results/smoke/``), or none, and then what is
there instead, so that an error can say it; and several folders given as one sweep's
(one per host, :func:`sweep_folders`)."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError

# How many entries of a folder an error names before it says "and N more".
LISTED = 8


def holds_results(folder: Path) -> bool:
    """A sweep (``trials/`` with at least one file) or a ``bench run`` (``trial.parquet``)."""
    return any((folder / "trials").glob("*.parquet")) or (folder / "trial.parquet").is_file()


def results_folders(root: Path) -> list[Path]:
    """``[root]`` when it holds results itself, else the folders directly under it that
    do, by name. Raises BenchError naming what ``root`` holds when neither."""
    if not root.is_dir():
        raise BenchError(f"no results folder at {root}")
    if holds_results(root):
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and holds_results(p))
    if not found:
        raise BenchError(f"no results in {root}: {describe(root)}")
    return found


def sweep_folders(given: list[Path]) -> list[Path]:
    """Several folders read as one sweep (one per host): each must hold results itself.
    Raises BenchError naming the first that does not, and what it holds."""
    for folder in given:
        if not folder.is_dir():
            raise BenchError(f"no results folder at {folder}")
        if not holds_results(folder):
            raise BenchError(
                f"{folder} holds no results of its own ({describe(folder)}); several "
                "folders are read as one sweep, so give each sweep folder"
            )
    return list(given)


def newest_sweep(root: Path = Path("results")) -> Path:
    """The sweep folder (one holding ``trials/``) under ``root`` written most recently."""
    if not root.is_dir():
        raise BenchError(f"no results folder at {root} (give RESULTS)")
    found = [p for p in root.iterdir() if (p / "trials").is_dir()]
    if not found:
        raise BenchError(f"no sweep folder (with trials/) under {root}: {describe(root)}")
    return max(found, key=lambda p: ((p / "trials").stat().st_mtime, p.name))


def describe(folder: Path) -> str:
    """What ``folder`` holds, in a reader's terms: 'it is empty', or its entries with
    what each looks like ('trials/ with no rows yet', 'oom/: bench oom probes')."""
    from bench.console import plain  # names from disk go to a terminal: ESC shown, not obeyed

    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    if not entries:
        return "the folder is empty"
    named = [plain(_entry(p)) for p in entries[:LISTED]]
    if len(entries) > LISTED:
        named.append(f"and {len(entries) - LISTED} more")
    return "it holds " + ", ".join(named)


def _entry(path: Path) -> str:
    if not path.is_dir():
        return path.name
    if path.name == "trials":
        return "trials/ with no rows yet"
    if any(path.glob("*/probes.parquet")) or (path / "probes.parquet").is_file():
        return f"{path.name}/ (bench oom probes)"
    if holds_results(path):
        return f"{path.name}/ (a sweep or run)"
    if (path / "trials").is_dir():
        return f"{path.name}/ (a sweep with no trial rows yet)"
    return f"{path.name}/"
