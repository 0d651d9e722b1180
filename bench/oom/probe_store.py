"""``<results>/oom/<name>/probes.parquet``: every probe of a search, kept for reuse.

One row per probe (bench.records.ProbeRecord). Several ``bench oom`` runs may share a
folder: each append re-reads the file under a lock and rewrites it atomically, so no
run's probes are lost and a reader never sees a half-written file.
"""

from __future__ import annotations

from pathlib import Path

from bench import records
from bench.filelock import exclusive

# Name -> arrow type of probes.parquet's columns (bench.records.ProbeRecord).
PROBE_COLUMNS = records.columns(records.ProbeRecord)


class ProbeStore:
    """``probes.parquet`` of one OOM run: read once, rewritten atomically per probe.
    Rows are dicts of ProbeRecord's columns; a file of an older schema version reads as
    the current one."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "probes.parquet"
        self.rows: list[dict] = self._read() if self.path.exists() else []

    def _read(self) -> list[dict]:
        from bench.store import read_table

        return read_table(self.path, records.ProbeRecord).to_pylist()

    def find(self, key: str, repeat: int = 0, *, since: int = 0) -> dict | None:
        """The latest finished (ok / oom) probe with this key and repetition index
        (``repeat``; a row without one is the first run, 0), among the rows from
        position ``since`` on, or None. The i-th run answers only for the i-th: a
        stored outcome near the boundary counts once, as the evidence it is. A probe
        killed by outside pressure is not an answer to keep: the next run measures it
        again."""
        for row in reversed(self.rows[since:]):
            if row.get("probe_key") != key or (row.get("repeat") or 0) != repeat:
                continue
            if row.get("outcome") in ("ok", "oom"):
                return None if row.get("killed") else row
        return None

    def add(self, row: dict) -> None:
        """Append one probe row (an undeclared key raises records.RecordError)."""
        from bench.store import write_atomic

        table = records.probes_table([row])  # checked before the lock and the re-read
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive(self.folder / ".probes.lock"):
            # Re-read under the lock: another run may have added probes since we read.
            merged = self._read() if self.path.exists() else []
            merged.append(table.to_pylist()[0])
            write_atomic(records.probes_table(merged), self.path)
            self.rows = merged
