"""Where a sweep lives: the Optuna storage, plus two coordination primitives Optuna lacks.

Storage choice (Optuna's docs: SQLite is not safe for several processes writing at
once, NFS locking is unreliable):

- default, embedded: ``JournalStorage`` on ``results/<sweep>/optuna.journal``, Optuna's
  append-only log, read by Optuna's ``JournalFileBackend`` and appended by
  :class:`bench.sweep.journal.WholeRecordJournal`. Every append takes the journal's lock
  (``JournalFileSymlinkLock``: an atomic ``symlink``) and is ``fsync``'d; readers replay
  the log. Safe for many processes on one machine. A process killed while holding that
  lock leaves the link behind; the others break it after its 30 s grace period (optuna
  5.0.0, ``_file.py``).
- ``postgresql://user@host/db``: ``RDBStorage``, for workers on many machines.

What Optuna does not give: a sweep-wide mutex (for creating the trial tickets exactly
once) and a way to tell whether the process that popped a trial is still alive (Optuna's
heartbeat is a timestamp with a grace period, i.e. a guess tuned by a timeout; the
journal storage has none). On one machine both are built on what dies with the
process, so a ``kill -9`` releases them at once and nothing needs a timeout:

- journal: ``fcntl.flock`` on files next to the journal (the kernel drops a dead
  process's locks; the mutex is :func:`bench.filelock.exclusive`). Local file systems
  only, like the journal's own guarantees.
- PostgreSQL: the mutex is a session-level advisory lock (``pg_advisory_lock``);
  liveness is a lease renewed by a heartbeat, with a grace period, so it survives a
  dropped connection: see :mod:`bench.sweep.postgres` (leases, fencing, reconnects).

The journal file's own robustness (whole records only, torn records set aside) is
:mod:`bench.sweep.journal`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError, ConfigError
from bench.failures import DiskFull, is_disk_full
from bench.filelock import exclusive

JOURNAL_NAME = "optuna.journal"


def new_owner_id() -> str:
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Coordination:
    """Sweep-wide mutex and owner liveness. Subclasses: file locks, PostgreSQL locks."""

    owner: str

    def start(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def mutex(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def is_alive(self, owner: str) -> bool:
        raise NotImplementedError

    def take_over(self, owner: str) -> bool:
        """Whether ``owner`` is dead, so its running trials may be given to others; where
        liveness is a lease, the lease is also revoked (fenced) in the same step."""
        return not self.is_alive(owner)

    def holds(self, lease: str) -> bool:
        """Whether the claim made under ``lease`` (``Job.lease``) is still this
        coordinator's, to write its result. A lock held by this live process cannot be
        taken over, so only a lease can fail this."""
        return True

    def others_alive(self) -> bool:
        """Whether another coordinator may be working on this sweep (True if unknown)."""
        return True

    def close(self) -> None:
        raise NotImplementedError


class FileCoordination(Coordination):
    def __init__(self, folder: Path, sweep: str) -> None:
        self.folder = folder
        self.lock_path = folder / f"{sweep}.sweep.lock"
        self.owners = folder / f"{sweep}.owners"
        self.owner = new_owner_id()
        self._alive_fd: int | None = None

    def start(self) -> None:
        self.owners.mkdir(parents=True, exist_ok=True)
        path = self.owners / f"{self.owner}.alive"
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        self._alive_fd = fd

    def mutex(self) -> contextlib.AbstractContextManager[None]:
        assert self._alive_fd is not None, "start() first"
        return exclusive(self.lock_path)

    def is_alive(self, owner: str) -> bool:
        if owner == self.owner:
            return True
        path = self.owners / f"{owner}.alive"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True  # its owner holds the lock: alive
            # Nobody holds it: the owner is gone (its locks died with it). Tidy up.
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        finally:
            os.close(fd)

    def others_alive(self) -> bool:
        return any(
            self.is_alive(path.name.removesuffix(".alive"))
            for path in self.owners.glob("*.alive")
            if path.name != f"{self.owner}.alive"
        )

    def close(self) -> None:
        if self._alive_fd is not None:
            with contextlib.suppress(OSError):
                (self.owners / f"{self.owner}.alive").unlink()
            os.close(self._alive_fd)
            self._alive_fd = None


@dataclass
class StorageHandle:
    storage: Any  # an optuna BaseStorage
    coordination: Coordination
    description: str  # for messages: where the study lives
    kind: str  # "journal" / "postgresql"


def parse_storage(url: str | None, sweep_dir: Path) -> tuple[str, str]:
    """(kind, target) for ``--storage``; raises ConfigError for what is not supported."""
    if url is None:
        return "journal", str(sweep_dir / JOURNAL_NAME)
    if url.startswith(("postgresql://", "postgresql+", "postgres://")):
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        return "postgresql", _with_driver(url)
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        if not path:
            raise ConfigError("--storage journal:PATH needs a path")
        return "journal", path
    if url.startswith("sqlite:"):
        raise ConfigError(
            "--storage sqlite: is not safe for several worker processes (Optuna's docs say so); "
            "leave --storage out for the embedded journal, or use postgresql://"
        )
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"--storage {scheme}:// is not supported; use postgresql://user@host/db "
            "or journal:PATH (the default is results/<sweep>/optuna.journal)"
        )
    return "journal", url


def _with_driver(url: str) -> str:
    """Name the DB driver when the URL does not: SQLAlchemy 2.1 picks psycopg (3) for a
    bare postgresql://, but the `postgres` extra installs psycopg2-binary; use whichever
    exists, and name the extra when neither does."""
    if not url.startswith("postgresql"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None:
        raise ConfigError(
            "--storage postgresql:// needs a PostgreSQL driver: pip install 'bench[postgres]'"
        )
    if not url.startswith("postgresql://"):
        return url
    if (
        importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(url: str | None, sweep_dir: Path, sweep: str) -> StorageHandle:
    """Open the study storage and start this process's coordination (owner registered)."""

    kind, target = parse_storage(url, sweep_dir)
    if kind == "journal":
        path = Path(target)
        coordination = FileCoordination(path.parent, sweep)
        try:
            from bench.sweep.journal import open_journal

            path.parent.mkdir(parents=True, exist_ok=True)
            storage = open_journal(path)
            coordination.start()
        except OSError as exc:  # a file where a folder should be, no permission, ...
            coordination.close()
            if is_disk_full(exc):
                raise DiskFull.at(path.parent, exc) from None
            flag = "--results" if url is None else "--storage"
            reason = exc.strerror or str(exc)
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise ConfigError(f"{flag}: cannot use the journal {path}: {reason}{where}") from None
        return StorageHandle(storage, coordination, str(path), kind)
    from bench.sweep.postgres import PostgresCoordination, open_rdb

    coordination = PostgresCoordination(target, sweep)
    try:
        coordination.start()
        storage = open_rdb(target, coordination)
    except Exception as exc:  # connection refused, bad credentials, missing driver
        coordination.close()
        if isinstance(exc, BenchError):
            raise
        text = " ".join(str(exc).split())[:300]
        raise BenchError(f"cannot open --storage {redact(target)}: {text}") from None
    return StorageHandle(storage, coordination, redact(target), kind)


def redact(url: str) -> str:
    """Hide a password in a URL for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url
