"""The embedded storage's journal file, grown by whole records only.

An Optuna journal record is one JSON line, and a line cut short is fatal to Optuna: its
reader skips a last line without a newline, but the next append completes that line
with a whole record, and from then on every load fails (``JSONDecodeError: Expecting
',' delimiter``). A full disk cuts a record short (the write stops at ENOSPC), and so
does a kill in mid-write. Here:

- :class:`WholeRecordJournal` appends a record whole or not at all: a short write is
  truncated away (truncating needs no free space) and the sweep stops with
  :class:`~bench.failures.DiskFull`; the same command resumes once there is room.
- Before appending it looks at the last byte: a last line without its newline, seen
  under the journal's lock (so no one is writing it), was cut short by a process that
  died. Its bytes go to ``optuna.journal.torn-<time>-<id>`` and are cut off, with a line
  on stderr that names the copy.
- :meth:`WholeRecordJournal.batched` gathers the records one thread appends inside it
  and appends them at its end as one write with one fsync: a sweep records a stack's
  64 trials (~10 records each) in one append instead of ~640, each ~3 ms of fsync. The
  records keep their order; a kill before the end loses the whole batch (its trials
  stay RUNNING in the study, and the next run takes them again as lost), and a kill in
  the write itself leaves whole records followed by at most one cut-short one, which
  the next append sets aside as below.
- :func:`open_journal` repairs a journal that Optuna cannot read because such a record
  is already inside it (appended by a writer without these checks, Optuna's own
  ``JournalFileBackend`` among them): whole records are kept in order, the cut-short
  ones set aside the same way.

Reading is Optuna's own ``JournalFileBackend``, sharing the lock (Optuna's default
``JournalFileSymlinkLock``) with the appends here and with any other Optuna process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import (
    BaseJournalBackend,
    JournalFileBackend,
    JournalFileSymlinkLock,
)

from bench.failures import DiskFull, is_disk_full

# How every record Optuna's JournalStorage writes begins: {"op_code": ...} first, in
# compact JSON. It cannot occur inside a record (JSON escapes a quote within a string),
# so a cut-short record followed on the same line by a whole one splits there.
RECORD_START = b'{"op_code":'


def open_journal(path: Path) -> JournalStorage:
    """``JournalStorage`` on the journal file at ``path`` (created if absent), appended in
    whole records. A journal that Optuna cannot read because a record inside it was cut
    short is repaired once (:func:`repair_journal`) and read again."""
    backend = WholeRecordJournal(path)
    try:
        storage = JournalStorage(backend)
        if not last_record_damaged(backend.path):
            return storage
    except ValueError:  # json.JSONDecodeError, or Optuna's "Invalid log format."
        pass
    with backend.locked():
        repair_journal(backend.path)
    return JournalStorage(WholeRecordJournal(path))  # a fresh reader: offsets moved


def last_record_damaged(path: Path) -> bool:
    """Whether the journal's last finished line is not a record. Optuna raises on a bad
    line only once another line follows it, i.e. after the next append: so a journal
    whose bad line is last loads, then breaks in the middle of a sweep."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        end = _last_line_start(fd, size)  # just past the last newline (a torn tail is fine)
        if end == 0:
            return False
        start = _last_line_start(fd, end - 1)
        return not _parses(os.pread(fd, end - start, start))


class WholeRecordJournal(BaseJournalBackend):
    """Optuna's journal file: read by Optuna's ``JournalFileBackend``, appended here under
    the same lock, so that the file only ever grows by whole records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = JournalFileSymlinkLock(str(self.path))
        self.reader = JournalFileBackend(str(self.path), lock_obj=self.lock)  # creates it
        # The open batch: (the thread that opened it, its records so far), or None.
        # Other threads (a storage shared by a heartbeat) append as usual meanwhile.
        self._batch: tuple[int, list[dict[str, Any]]] | None = None

    def read_logs(self, log_number_from: int) -> Any:
        return self.reader.read_logs(log_number_from)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Append what this thread appends inside the block as one write at its end,
        also when the block raises (what it recorded before is whole, parquet first).
        Optuna's replay does not see the batch's records until then: a batch holds
        writes whose effect no later read inside it depends on (user attributes,
        ``tell``). Nested blocks join the outer one."""
        if self._batch is not None and self._batch[0] == threading.get_ident():
            yield
            return
        self._batch = (threading.get_ident(), [])
        try:
            yield
        finally:
            logs = self._batch[1]
            self._batch = None
            if logs:
                self._append(logs)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        batch = self._batch
        if batch is not None and batch[0] == threading.get_ident():
            batch[1].extend(logs)
            return
        self._append(logs)

    def _append(self, logs: list[dict[str, Any]]) -> None:
        # The text Optuna's JournalFileBackend writes: one compact JSON line per record.
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        with self.locked():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            try:
                set_aside_torn_tail(fd, self.path)
                append_whole(fd, data, self.path)
            finally:
                os.close(fd)


def append_whole(fd: int, data: bytes, path: Path) -> None:
    """Append ``data`` to the open journal ``fd`` and fsync it, or leave the file as it
    was (DiskFull when there is no room). Call under the journal's lock."""
    size = os.fstat(fd).st_size
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except BaseException as exc:
        # A short record would become the head of the next one: take it back. Readers
        # skip a last line without its newline until then.
        if written:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise DiskFull.at(path, exc) from None
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        # Every byte is written (another process may have read the record by now), so it
        # stays; the caller learns that the disk could not keep it.
        if is_disk_full(exc):
            raise DiskFull.at(path, exc) from None
        raise


def set_aside_torn_tail(fd: int, path: Path) -> Path | None:
    """A last line without its newline, seen under the journal's lock, was cut short by
    a process that stopped writing it: keep its bytes in a side file and cut it off, so
    the next record starts a line of its own. Returns the side file, if any."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    start = _last_line_start(fd, size)
    torn = os.pread(fd, size - start, start)
    kept = _keep(path, [torn])
    os.ftruncate(fd, start)
    os.fsync(fd)
    _say(
        f"{path}: its last record was incomplete ({len(torn)} bytes, cut short by a process "
        f"that stopped mid-write); set aside in {kept}"
    )
    return kept


def _last_line_start(fd: int, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 if there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - 65536)
        newline = os.pread(fd, end - begin, begin).rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def repair_journal(path: Path) -> Path | None:
    """Rewrite a journal whose lines do not all parse: whole records kept, in order; the
    bytes of cut-short ones set aside in a side file, named on stderr. Call under the
    journal's lock. Returns the side file (None: nothing needed repair)."""
    from bench.store import write_bytes_atomic

    whole, torn = [], []
    with open(path, "rb") as f:
        for line in f:
            records, pieces = split_records(line)
            whole += records
            torn += pieces
    if not torn:
        return None
    kept = _keep(path, torn)
    write_bytes_atomic(b"".join(whole), path)
    _say(f"{path}: {len(torn)} incomplete record(s) taken out of the journal; set aside in {kept}")
    return kept


def split_records(line: bytes) -> tuple[list[bytes], list[bytes]]:
    """(whole records, each a newline-ended line; pieces that are not records) of one
    line of a journal. A piece is whole when it parses and its line was finished."""
    if line.endswith(b"\n") and _parses(line):
        return [line], []
    finished = line.endswith(b"\n")
    body = line.rstrip(b"\n")
    starts = sorted({0, *_find_all(body, RECORD_START)})
    whole, torn = [], []
    for begin, end in zip(starts, [*starts[1:], len(body)], strict=True):
        piece = body[begin:end]
        if not piece:
            continue
        if _parses(piece) and (finished or end < len(body)):
            whole.append(piece + b"\n")
        else:
            torn.append(piece)
    return whole, torn


def _find_all(data: bytes, needle: bytes) -> Iterator[int]:
    i = data.find(needle)
    while i >= 0:
        yield i
        i = data.find(needle, i + 1)


def _parses(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def _keep(path: Path, pieces: list[bytes]) -> Path:
    """Write set-aside bytes next to the journal (before anything is cut from it)."""
    from bench.store import write_bytes_atomic

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.torn-{stamp}-{uuid.uuid4().hex[:6]}")
    write_bytes_atomic(b"\n".join(pieces), kept)  # DiskFull if even this does not fit
    return kept


def _say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr)
