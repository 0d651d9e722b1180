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
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from test_sweep import _coordinators, _finish, _ran_here, counted_spec, runs_per_tag

from bench.store import load_results
from bench.sweep.storage import PostgresCoordination, _with_driver

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


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "no PostgreSQL: set BENCH_TEST_POSTGRES_URL or install Debian's postgresql package"
        )
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the cluster as the postgres system user.
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = _free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=50"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


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
    """Advisory locks: an owner is alive exactly as long as its session; the mutex excludes."""
    a = PostgresCoordination(postgres_url, "liveness")
    b = PostgresCoordination(postgres_url, "liveness")
    a.start()
    b.start()
    try:
        assert b.is_alive(a.owner) and a.is_alive(b.owner)
        with a.mutex():
            # b cannot take the mutex while a holds it (try-lock on the same key).
            from bench.sweep.storage import _key64

            assert not b._scalar("SELECT pg_try_advisory_lock(:k)", _key64("bench-sweep:liveness"))
        a.close()  # session gone = owner dead, at once, no timeout
        deadline = time.monotonic() + 10
        while b.is_alive(a.owner) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not b.is_alive(a.owner)
    finally:
        with contextlib.suppress(Exception):
            a.close()
        b.close()
