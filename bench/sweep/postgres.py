"""A sweep on PostgreSQL: coordinator liveness as a lease, fencing, and connection loss
ridden out.

Liveness is a row per coordinator in ``bench_sweep_leases`` whose ``expires_at`` a
heartbeat thread pushes ``lease_s`` ahead every ``lease_s / 4`` seconds; not the life of
one connection, so a dropped connection (``idle_session_timeout``, a proxy, a
``pg_terminate_backend``) is reconnected and the coordinator stays alive. A coordinator is
dead once its lease has been expired for ``grace_s`` more; after a server restart every
lease counts from the restart (``pg_postmaster_start_time()``), so waiting out a restart
kills nobody.

Fencing: taking over a dead coordinator's trials first deletes its lease row, in the one
statement that checks it is dead. The lease id is the token each claim carries
(``Job.lease``); before writing a result the recorder renews that lease (:meth:`holds`),
which fails once the row is gone, so a coordinator that was taken over never writes the
result or ``tell``s it. A renewal leaves ``lease_s + grace_s`` before anyone may take
over: the write that follows fits in that. The heartbeat that finds its row gone
registers under a new lease id and says so in one line.

Connection loss: every statement, and every call into Optuna's storage
(:class:`RetryingStorage`), is retried with backoff after reconnecting, for up to
``reconnect_s`` (a server restart is waited out), with one line when waiting starts.
Advisory locks held as the sweep mutex die with their session: they are taken again
on the new connection before the statement is retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage

from bench.errors import BenchError, ConfigError
from bench.sweep.storage import Coordination, new_owner_id

LEASE_S = 30.0  # a coordinator's lease; the heartbeat renews it 4 times per lease
RECONNECT_S = 300.0  # how long a lost server is waited for before the sweep stops
LEASE_TABLE = "bench_sweep_leases"

# now() is past the lease plus the grace, the lease counted at least from the server's
# start (a restart does not expire anyone).
_DEAD = (
    "now() > greatest(expires_at, pg_postmaster_start_time() + make_interval(secs => :lease))"
    " + make_interval(secs => :grace)"
)


def seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds > 0")
    return value


def key64(text: str) -> int:
    """A signed 64-bit advisory-lock key from a string."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: Optuna wraps SQLAlchemy's errors) is a lost or
    refused connection rather than a statement the server rejected."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(
            seen,
            sqlalchemy.exc.PendingRollbackError  # left broken by a lost connection
            | sqlalchemy.exc.OperationalError
            | sqlalchemy.exc.InterfaceError
            | sqlalchemy.exc.DisconnectionError,
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error under ``exc``: Optuna wraps SQLAlchemy's in a message
    about invalid data in the commit, which a lost connection is not."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            return seen.orig
        seen = seen.__cause__ or seen.__context__
    return exc


def connect_args(url: str) -> dict[str, Any]:
    """Dead peers are noticed in seconds (TCP keepalives), not hours; the connections are
    named, so an operator can find a sweep's in pg_stat_activity."""
    args: dict[str, Any] = {"application_name": "bench-sweep", "connect_timeout": 10}
    if "+psycopg2" in url:
        args |= {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}
        args["keepalives_count"] = 3
    return args


class Reconnects:
    """Retry with backoff across connection loss, for up to ``limit_s``; one line when a
    wait starts and one when it ends."""

    def __init__(self, where: str, limit_s: float, log: Callable[[str], None]) -> None:
        self.where = where
        self.limit_s = limit_s
        self.log = log
        self._lock = threading.Lock()
        self._down_since: float | None = None

    def call(self, fn: Callable[[], Any], *, on_error: Callable[[], None] = lambda: None) -> Any:
        start = time.monotonic()
        delay = 0.2
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                on_error()
                self._waiting(exc)
                if time.monotonic() - start > self.limit_s:
                    raise BenchError(
                        f"PostgreSQL at {self.where} unreachable for {self.limit_s:.0f} s; "
                        "re-run the same command to resume"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._back()
            return result

    def _waiting(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        reason = " ".join(str(_driver_error(exc)).split())[:160]
        self.log(
            f"lost the connection to PostgreSQL at {self.where} ({reason}); "
            f"reconnecting, waiting up to {self.limit_s:.0f} s"
        )

    def _back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.log(
                f"PostgreSQL at {self.where} reachable again after {time.monotonic() - since:.1f} s"
            )


class Session:
    """One autocommit connection that reconnects; the advisory locks taken through it
    are taken again on the new connection."""

    def __init__(self, url: str, reconnects: Reconnects) -> None:
        self.engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args(url)
        )
        self.reconnects = reconnects
        self.held: list[int] = []  # advisory-lock keys held on this connection, in order
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            for key in self.held:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def execute(self, sql: str, **params: Any) -> Any:
        def once() -> Any:
            return self._connection().execute(sqlalchemy.text(sql), params)

        return self.reconnects.call(once, on_error=self._drop)

    def lock(self, key: int) -> None:
        self.execute("SELECT pg_advisory_lock(:k)", k=key)
        self.held.append(key)

    def unlock(self, key: int) -> None:
        self.held.remove(key)
        try:
            self._connection().execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        except Exception:  # a lost session has released it already; start a new one
            self._drop()

    def close(self) -> None:
        self._drop()
        self.engine.dispose()


class PostgresCoordination(Coordination):
    def __init__(self, url: str, sweep: str, *, log: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.sweep = sweep
        self.owner = new_owner_id()
        self.lease_s = seconds_from_env("BENCH_SWEEP_LEASE_S", LEASE_S)
        self.grace_s = self.lease_s
        self.log = log or _stderr
        where = url.rsplit("@", 1)[-1]
        self.reconnects = Reconnects(
            where, seconds_from_env("BENCH_SWEEP_RECONNECT_S", RECONNECT_S), self._say
        )
        self._session: Session | None = None
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    def _say(self, line: str) -> None:
        self.log(f"{self.sweep}: {line}")

    def _timing(self) -> dict[str, float]:
        return {"lease": self.lease_s, "grace": self.grace_s}

    def start(self) -> None:
        self._session = Session(self.url, self.reconnects)
        with self.exclusive("bench-lease-schema"):  # concurrent CREATE TABLE collides
            self._session.execute(
                f"CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (owner text PRIMARY KEY, "
                "sweep text NOT NULL, host text NOT NULL, pid integer NOT NULL, "
                "expires_at timestamptz NOT NULL)"
            )
        self._register(self._session, self.owner)
        self._beat = threading.Thread(target=self._heartbeat, name="bench-lease", daemon=True)
        self._beat.start()

    def _register(self, session: Session, owner: str) -> None:
        session.execute(
            f"INSERT INTO {LEASE_TABLE} VALUES (:o, :s, :h, :p, now() + make_interval(secs => :lease))",
            o=owner,
            s=self.sweep,
            h=socket.gethostname()[:200],
            p=os.getpid(),
            lease=self.lease_s,
        )

    def _renew(self, session: Session, owner: str) -> bool:
        result = session.execute(
            f"UPDATE {LEASE_TABLE} SET expires_at = now() + make_interval(secs => :lease) "
            "WHERE owner = :o",
            o=owner,
            lease=self.lease_s,
        )
        return result.rowcount == 1

    def _heartbeat(self) -> None:
        session = Session(self.url, self.reconnects)
        try:
            while not self._stop.wait(self.lease_s / 4):
                try:
                    if self._renew(session, self.owner):
                        continue
                    old, new = self.owner, new_owner_id()
                    self._register(session, new)
                    self.owner = new
                    self._say(
                        f"coordinator {old} was taken for dead (its lease ran out) and its "
                        f"running trials were given to others; their results here will not be "
                        f"recorded; continuing as {new}"
                    )
                except BenchError as exc:  # the server stayed away: the main thread says so
                    self._say(str(exc))
        finally:
            session.close()

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        key = key64(name)
        self._session.lock(key)
        try:
            yield
        finally:
            self._session.unlock(key)

    def mutex(self) -> contextlib.AbstractContextManager[None]:
        return self.exclusive(f"bench-sweep:{self.sweep}")

    def is_alive(self, owner: str) -> bool:
        if owner == self.owner:
            return True
        row = self._session.execute(
            f"SELECT NOT ({_DEAD}) FROM {LEASE_TABLE} WHERE owner = :o", o=owner, **self._timing()
        ).first()
        return bool(row and row[0])

    def take_over(self, owner: str) -> bool:
        if owner == self.owner:
            return False
        deleted = self._session.execute(
            f"DELETE FROM {LEASE_TABLE} WHERE owner = :o AND {_DEAD}", o=owner, **self._timing()
        ).rowcount
        if deleted:
            return True
        # Not deleted: alive, or gone already (closed, or fenced before). A lease id is
        # never registered again, so a missing row stays missing.
        return (
            self._session.execute(f"SELECT 1 FROM {LEASE_TABLE} WHERE owner = :o", o=owner).first()
            is None
        )

    def holds(self, lease: str) -> bool:
        return self._renew(self._session, lease)

    def others_alive(self) -> bool:
        row = self._session.execute(
            f"SELECT count(*) FROM {LEASE_TABLE} WHERE sweep = :s AND owner <> :o AND NOT ({_DEAD})",
            s=self.sweep,
            o=self.owner,
            **self._timing(),
        ).first()
        return bool(row[0])

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
            self._beat = None
        if self._session is not None:
            with contextlib.suppress(Exception):  # gone at once: its trials are free now
                self._session.reconnects.limit_s = 5.0
                self._session.execute(f"DELETE FROM {LEASE_TABLE} WHERE owner = :o", o=self.owner)
            self._session.close()
            self._session = None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _retrying(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        target = getattr(self.inner, name)
        return self.reconnects.call(lambda: target(*args, **kwargs))

    method.__name__ = name
    return method


class RetryingStorage(BaseStorage):
    """An Optuna storage whose every call is retried across connection loss.

    Retrying a call whose commit reached the server but whose answer did not is safe
    for the sweep: a repeated attribute write writes the same value; a repeated
    WAITING -> RUNNING fails as "already updated" and ``ask`` pops the next ticket,
    leaving a RUNNING trial owned by nobody, which the next reconcile re-queues."""

    def __init__(self, inner: BaseStorage, reconnects: Reconnects) -> None:
        self.inner = inner
        self.reconnects = reconnects


for _name in [n for n in dir(BaseStorage) if not n.startswith("_")]:
    if callable(getattr(BaseStorage, _name)):
        setattr(RetryingStorage, _name, _retrying(_name))
RetryingStorage.__abstractmethods__ = frozenset()


def open_rdb(url: str, coordination: PostgresCoordination) -> BaseStorage:
    """Optuna's RDBStorage on ``url`` (cached, as optuna.create_study would wrap it),
    retried across connection loss. Under the schema lock: RDBStorage creates its tables
    on first use, and two processes doing that at once on a fresh database collide in
    PostgreSQL's catalog (a duplicate key on pg_type_typname_nsp_index)."""
    with coordination.exclusive("bench-optuna-schema"):
        rdb = optuna.storages.RDBStorage(
            url, engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args(url)}
        )
    return RetryingStorage(optuna.storages.get_storage(rdb), coordination.reconnects)
