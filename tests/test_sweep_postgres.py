"""Several coordinators sharing one sweep through a real PostgreSQL server.

The server: ``$BENCH_TEST_POSTGRES_URL`` if set (a database the test may create tables
in, e.g. postgresql://postgres@127.0.0.1:5432/postgres); otherwise a throwaway cluster
started here with Debian's ``postgresql`` binaries (initdb + pg_ctl, trust auth, a free
loopback port, a socket in a temp dir), run as the ``postgres`` user when the tests run
as root. Skipped, with the reason, only when neither is available.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from test_sweep import (
    ENV,
    REPO,
    _coordinators,
    _finish,
    _ran_here,
    _wait_for,
    counted_spec,
    runs_per_tag,
)

from bench.store import load_results
from bench.sweep.postgres import PostgresCoordination, key64
from bench.sweep.storage import _with_driver

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster: initdb + pg_ctl in a temp dir, trust auth, a free
    loopback port; as the ``postgres`` system user when running as root, since initdb
    refuses root."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and self.pg_ctl):
            pytest.skip(
                "no PostgreSQL: set BENCH_TEST_POSTGRES_URL or install Debian's postgresql package"
            )
        self.as_user: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run the server as")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.folder} -c fsync=off"
        self.opts += " -c max_connections=50"
        self._pg_ctl("-o", self.opts, "-w", "start")

    def _run(self, *cmd: str, check: bool = True) -> None:
        subprocess.run([*self.as_user, *cmd], check=check, capture_output=True, timeout=120)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        # -l on every start: without it the server writes to pg_ctl's captured stdout and
        # holds that pipe open, so subprocess.run would wait for the server to exit.
        log = str(self.folder / "log")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", log, *args, check=check)

    def restart(self, down_s: float) -> None:
        """Stop fast (every session cut), stay down ``down_s`` (connections refused),
        start again with the same options."""
        self._pg_ctl("-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self._pg_ctl("-o", self.opts, "-w", "start")

    def remove(self) -> None:
        self._pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.remove()


def test_three_coordinators_on_postgres_run_each_key_once(tmp_path, postgres_url):
    n = 12
    name = f"pg-{uuid.uuid4().hex[:8]}"  # a fresh study even on a shared server
    spec, log = counted_spec(tmp_path, name, n, delay=0.2)
    results = tmp_path / "results"  # one folder here; on many hosts each has its own
    outputs = _finish(_coordinators(spec, results, 3, storage=postgres_url))
    assert runs_per_tag(log) == Counter({i: 1 for i in range(n)})
    ran = _ran_here(outputs)
    assert sum(ran) == n and sum(c > 0 for c in ran) >= 2
    study = optuna.load_study(study_name=name, storage=_with_driver(postgres_url))
    per_key = Counter(
        t.user_attrs["bench_key"]
        for t in study.get_trials()
        if t.user_attrs.get("bench_status") == "ok"
    )
    assert len(per_key) == n and set(per_key.values()) == {1}
    assert len(load_results(results / name).trials) == n
    assert not [o for o in outputs if "Traceback" in o]


def test_postgres_liveness_and_mutex(postgres_url):
    """Leases: an owner is alive while its lease holds; closing frees it at once; the
    mutex excludes; a lease survives losing its connection."""
    a = PostgresCoordination(_with_driver(postgres_url), "liveness")
    b = PostgresCoordination(_with_driver(postgres_url), "liveness")
    a.start()
    b.start()
    try:
        assert b.is_alive(a.owner) and a.is_alive(b.owner)
        assert not b.take_over(a.owner)  # alive: not taken over
        with a.mutex():
            # b cannot take the mutex while a holds it (try-lock on the same key).
            got = b._session.execute(
                "SELECT pg_try_advisory_lock(:k)", k=key64("bench-sweep:liveness")
            ).scalar()
            assert not got
        _terminate(postgres_url)  # every bench connection dropped: a reconnects, stays alive
        assert b.is_alive(a.owner) and a.holds(a.owner)
        a.close()  # lease row gone = owner dead, at once
        assert not b.is_alive(a.owner) and b.take_over(a.owner)
    finally:
        with contextlib.suppress(Exception):
            a.close()
        b.close()


def _terminate(url: str) -> int:
    """pg_terminate_backend on every bench connection (all coordinators'): a cut link."""
    engine = sqlalchemy.create_engine(_with_driver(url), poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        n = conn.execute(
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'bench-sweep' AND pid <> pg_backend_pid()"
            )
        ).scalar()
    engine.dispose()
    return n


def _fresh_database(url: str, *settings: str) -> str:
    """A new database on the server (ALTER DATABASE settings stay out of other tests)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(_with_driver(url), poolclass=sqlalchemy.pool.NullPool)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        for setting in settings:
            conn.execute(sqlalchemy.text(f"ALTER DATABASE {name} SET {setting}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def _hosts(spec: Path, folders: list[Path], storage: str) -> list[subprocess.Popen]:
    """One coordinator per results folder, as on separate hosts; a short lease so a
    wrongly taken-over coordinator would show within the test."""
    env = {**ENV, "BENCH_SWEEP_LEASE_S": "2"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bench.sweep", str(spec), "--workers", "1"]
            + ["--results", str(folder), "--storage", storage],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in folders
    ]


def _rows_per_key(folders: list[Path], name: str) -> Counter:
    rows: Counter = Counter()
    for folder in folders:
        if (folder / name / "trials").exists():
            rows.update(load_results(folder / name).trials["trial_key"])
    return rows


def _exactly_once(tmp_path, name: str, storage: str, n: int, delay: float, during) -> list[str]:
    spec, log = counted_spec(tmp_path, name, n, delay=delay)
    folders = [tmp_path / "host-a", tmp_path / "host-b"]
    procs = _hosts(spec, folders, storage)
    deadline = time.monotonic() + 120
    while len(runs_per_tag(log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # both coordinators train
    during()
    outputs = _finish(procs, timeout=300)
    assert runs_per_tag(log) == Counter({i: 1 for i in range(n)}), outputs
    rows = _rows_per_key(folders, name)
    assert len(rows) == n and set(rows.values()) == {1}, outputs
    assert not [o for o in outputs if "Traceback" in o], outputs
    return outputs


def test_terminated_connections_do_not_retrain(tmp_path, postgres_url):
    """pg_terminate_backend on every coordinator's connections, three times while trials
    run: each coordinator reconnects and keeps its lease; one training per key, one row
    per key across both hosts' folders."""

    def cut() -> None:
        for _ in range(3):
            assert _terminate(postgres_url) > 0
            time.sleep(1.5)

    url = _fresh_database(postgres_url)
    outputs = _exactly_once(tmp_path, "cut", url, 4, 3.0, cut)
    assert any("lost the connection to PostgreSQL" in o for o in outputs)


def test_idle_session_timeout_does_not_retrain(tmp_path, postgres_url):
    """The server closes every session idle for 1 s, trials take 4 s: sessions die during
    each trial, no coordinator is taken for dead."""
    url = _fresh_database(postgres_url, "idle_session_timeout = '1s'")
    _exactly_once(tmp_path, "idle", url, 4, 4.0, lambda: None)


def test_changed_spec_on_postgres_names_the_delete_command(tmp_path, postgres_url):
    """The refusal says how to drop a PostgreSQL study and creates no results folder."""
    name = f"pgspec-{uuid.uuid4().hex[:8]}"
    spec, _ = counted_spec(tmp_path, name, 1)
    _finish(_coordinators(spec, tmp_path / "results", 1, storage=postgres_url))
    spec.write_text(spec.read_text().replace("samples = 64", "samples = 96"))
    other = tmp_path / "elsewhere"
    p = subprocess.run(
        [sys.executable, "-m", "bench.sweep", str(spec), "--results", str(other)]
        + ["--storage", postgres_url],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 or p.returncode == 1, p.stderr
    assert f"optuna delete-study --study-name {name} --storage postgresql" in p.stderr
    assert "Traceback" not in p.stderr and not other.exists()


def test_a_server_restart_is_waited_out(tmp_path):
    """The server stopped fast (every connection cut) after the first row and started
    3 s later: the sweep waits with a line saying so and the driver's reason, exits 0,
    one training and one row per key. Its own cluster: a restart would cut the other
    tests' server."""
    n = 6
    spec, log = counted_spec(tmp_path, "restart", n, delay=1.0)
    results = tmp_path / "results"
    with throwaway_cluster() as cluster:
        err = tmp_path / "stderr"
        with err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench", "sweep", str(spec), "--workers", "1"]
                + ["--results", str(results), "--storage", cluster.url],
                env={**ENV, "BENCH_SWEEP_RECONNECT_S": "60"},
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                _wait_for(lambda: any(results.rglob("trials/*.parquet")), 60)
                cluster.restart(down_s=3.0)
                rc = proc.wait(timeout=120)
            finally:
                proc.kill()
        out = err.read_text()
        assert rc == 0, out[-2000:]
        assert "lost the connection to PostgreSQL" in out and "Traceback" not in out, out
        assert "reachable again after" in out, out
        # The waiting line gives the driver's reason, not Optuna's wrapper of it.
        assert "An exception is raised during the commit" not in out, out
        assert runs_per_tag(log) == Counter({i: 1 for i in range(n)}), out
        rows = _rows_per_key([results], "restart")
        assert len(rows) == n and set(rows.values()) == {1}, out
