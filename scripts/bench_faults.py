"""Faults: nothing lost, nothing trained twice. A 48-trial sweep broken on purpose.

    python scripts/bench_faults.py [--kills 5] [--seed 0]
        [--scenarios journal-kill,pg-kill,disk-full] [--postgres-url URL]

Each scenario runs ``python -m bench sweep SPEC`` on a spec this script writes: 48 grid
points of a ``module:function`` workload (seed-mlp on 64 samples, plus a short sleep, so
a trial takes ~0.3-1 s) that appends one line per model build to a log, so every
training is counted, with the coordinator run that did it.

- ``journal-kill``: ``--kills`` times, SIGKILL the coordinator at a random moment while
  its workers train (they die with it), then run the same command to the end.
- ``pg-kill``: two coordinators, each with its own results folder as on two hosts, share
  the sweep through ``--storage postgresql://...``; ``--kills`` times, at random moments,
  ``pg_terminate_backend`` on every bench connection. The server is ``--postgres-url``,
  or a throwaway cluster started here (Debian's ``initdb``/``pg_ctl``, as ``.ci/run``
  does); skipped, with the reason, when neither exists. The lease is 2 s (grace 2 s), so
  a coordinator wrongly taken for dead would show within the run.
- ``disk-full``: the results folder on a 16 MiB tmpfs; twice, at a random moment, fill it
  to the last byte, wait for the sweep to stop (exit 75), free the space; then the same
  command to the end. Skipped, with the reason, where the tmpfs cannot be mounted.

Per scenario, one table: trainings (model builds in the log); of those, re-runs expected
because the run that trained the key before was cut (kill -9, or stopped by the full
disk: the trials running or being written then run again) and re-runs not so explained;
trials rows across all folders; duplicates (trial_keys with more than one row); lost
(keys with no row at the end); unreadable files (parquet that pyarrow or polars cannot
read, and the Optuna study if it does not load); keys whose study holds other than one
result; rows not ``ok``; temporary files left; exit codes of the runs.

Exit code 0 when every scenario that ran shows no duplicate, nothing lost, no unreadable
file and no unexplained re-run (a skipped scenario is not a failure); 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.console import text_table  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402

TRIALS = 48
DELAY_S = 0.3  # added to each model build: trials long enough to be cut mid-training
SCENARIOS = ("journal-kill", "pg-kill", "disk-full")
RUN_TIMEOUT_S = 240  # one coordinator run; a hang past this is reported, then killed
RUN_ENV = "BENCH_FAULTS_RUN"  # the coordinator run's label, inherited by its workers

WORKLOAD = f'''\
"""Seed-mlp that logs each real model build: "<tag> <run label> <pid>"."""
import os
import time

import torch

from bench.workloads.seed_mlp import build


def counted(*, samples=None, tag=0, log="", delay=0.0):
    w = build(samples=samples, val_samples=50)
    inner = w.make_model

    def make_model():
        if torch.empty(0).device.type != "meta":  # not the FLOP counter's meta copy
            # One O_APPEND write(2): lines of concurrent processes never interleave.
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            run = os.environ.get("{RUN_ENV}", "?")
            os.write(fd, f"{{tag}} {{run}} {{os.getpid()}}\\n".encode())
            os.close(fd)
            time.sleep(delay)
        return inner()

    w.make_model = make_model
    return w
'''


class Skip(Exception):
    """A scenario that cannot run here; the message says why."""


@dataclass
class Run:
    label: str
    rc: int | None = None
    cut: str = ""  # "kill -9", "disk full": the run stopped before its trials all ended


@dataclass
class Scenario:
    """What one scenario ran: its spec, its coordinator runs, the folders they wrote."""

    name: str
    spec: Path
    log: Path
    folders: list[Path]
    storage: str = ""  # "" for the embedded journal in each folder
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # counted while its folders still exist


# -- set-up ------------------------------------------------------------------------------


def write_spec(tmp: Path, name: str) -> tuple[Path, Path]:
    (tmp / "faults_workload.py").write_text(WORKLOAD)
    log = tmp / f"{name}.trainings"
    spec = tmp / f"{name}.toml"
    spec.write_text(
        f"""\
# Fault benchmark: is every grid point trained once and recorded once, whatever breaks?
name = "{name}"
device = "cpu"

[workload]
name = "faults_workload:counted"
options = {{ log = "{log}", delay = {DELAY_S} }}

[base]
samples = 64
batch_size = 16
timing_warmup_steps = 0

[budget]
epochs = 1

[grid]
"workload_options.tag" = {list(range(TRIALS))}
"""
    )
    return spec, log


def sweep_env(tmp: Path, label: str, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(tmp), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, RUN_ENV: label, **extra}


def start_sweep(sc: Scenario, folder: Path, label: str, workers: int, **env: str):
    cmd = [sys.executable, "-m", "bench", "sweep", str(sc.spec), "--results", str(folder)]
    cmd += ["--workers", str(workers), "--threads", "1"]
    if sc.storage:
        cmd += ["--storage", sc.storage]
    sc.runs.append(Run(label))
    return subprocess.Popen(
        cmd,
        env=sweep_env(sc.spec.parent, label, **env),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the script can reap the whole sweep
    )


def finish(sc: Scenario, proc: subprocess.Popen, run: Run) -> None:
    """Wait for ``proc``; a hang is noted, then the group killed."""
    try:
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        sc.notes.append(f"run {run.label} still running after {RUN_TIMEOUT_S} s: killed")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    run.rc = proc.returncode
    if "Traceback" in err:
        sc.notes.append(f"run {run.label} (exit {run.rc}) printed a traceback: {tail(err)}")
    elif run.rc not in (0, -signal.SIGKILL) and not run.cut:
        sc.notes.append(f"run {run.label} exit {run.rc}: {tail(err)}")
    elif run.cut == "disk full" and not tail(err).startswith("bench: error: disk full at "):
        sc.notes.append(f"run {run.label} on a full disk ended with: {tail(err)}")
    reap(sc, proc.pid)


def tail(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "(no output)"


def reap(sc: Scenario, pgid: int) -> None:
    """The workers die with their coordinator; give them 5 s, then note and kill any left."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    sc.notes.append(f"processes of group {pgid} outlived their coordinator by 5 s: killed")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def trainings(log: Path) -> list[tuple[int, str]]:
    """(tag, run label) per model build, in log order."""
    if not log.exists():
        return []
    return [
        (int(tag), run)
        for tag, run, _ in (line.split() for line in log.read_text().splitlines() if line.strip())
    ]


def wait_until(predicate, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# -- journal-kill ------------------------------------------------------------------------


def journal_kill(tmp: Path, rng: random.Random, kills: int) -> Scenario:
    spec, log = write_spec(tmp, "faults-journal")
    sc = Scenario("journal-kill", spec, log, [tmp / "results"])
    landed = 0
    for i in range(kills):
        label = f"k{i}"
        proc = start_sweep(sc, sc.folders[0], label, workers=2)
        run = sc.runs[-1]
        wait_until(lambda label=label: any(r == label for _, r in trainings(log)), 120, proc)
        # The kills spread over the sweep: after 0 to twice this run's share of the rows
        # still to write, then within a trial (~0.4 s), so a kill lands mid-training.
        done = rows_written(sc.folders[0])
        share = 2 * (TRIALS - done) // (kills - i + 1)
        target = done + rng.randint(0, max(0, share))
        wait_until(lambda t=target: rows_written(sc.folders[0]) >= t, 120, proc)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the coordinator only, as a crash does
            run.cut = "kill -9"
            landed += 1
        finish(sc, proc, run)
        if not run.cut and run.rc == 0:
            break  # the sweep ended before the kill came: nothing left to cut
    proc = start_sweep(sc, sc.folders[0], "final", workers=2)
    finish(sc, proc, sc.runs[-1])
    sc.notes.insert(0, f"{landed} kill -9 of the coordinator landed (of {kills} asked)")
    sc.figures = tally(sc)
    return sc


# -- pg-kill -----------------------------------------------------------------------------


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(tmp: Path):
    """A PostgreSQL cluster on loopback for this run (trust auth, fsync off); as the
    ``postgres`` system user when running as root, since initdb refuses root."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise Skip("no PostgreSQL: pass --postgres-url or install Debian's postgresql package")
    # Its own folder, not under the script's (mode 0700, owned by whoever runs this).
    folder = Path(tempfile.mkdtemp(prefix="bench-faults-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise Skip("running as root and there is no 'postgres' user to run a server") from None
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    try:
        for cmd in (
            [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            [pg_ctl, "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start"],
        ):
            p = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise Skip(f"{Path(cmd[0]).name} failed: {tail(p.stderr + p.stdout)}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def sqlalchemy_url(url: str) -> str:
    """The URL with the psycopg2 driver named, as bench's storage does when only
    psycopg2 (the ``postgres`` extra) is installed."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def terminate_bench_connections(url: str) -> int:
    import psycopg2

    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'bench-sweep' AND pid <> pg_backend_pid()"
        )
        return cur.fetchone()[0]


def check_server(url: str) -> None:
    """A --postgres-url that does not answer is bad input: one line, exit 2."""
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=10).close()
    except psycopg2.Error as exc:
        why = next(x.strip() for x in f"{exc}\n?".splitlines() if x.strip())
        print(f"bench_faults: --postgres-url does not answer: {why}", file=sys.stderr)
        raise SystemExit(2) from None


def pg_kill(tmp: Path, rng: random.Random, kills: int, url: str | None) -> Scenario:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise Skip("no PostgreSQL driver: pip install -e '.[postgres]'") from None
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(throwaway_postgres(tmp))
        else:
            check_server(url)
        name = f"faults-pg-{uuid.uuid4().hex[:8]}"  # a fresh study even on a shared server
        spec, log = write_spec(tmp, name)
        sc = Scenario("pg-kill", spec, log, [tmp / "host-a", tmp / "host-b"], storage=url)
        procs = [
            start_sweep(sc, folder, f"host-{h}", workers=1, BENCH_SWEEP_LEASE_S="2")
            for h, folder in zip("ab", sc.folders, strict=True)
        ]
        wait_until(lambda: len(trainings(log)) >= 2, 120)  # both hosts train
        cut = 0
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 2.0))
            if all(p.poll() is not None for p in procs):
                break
            cut += terminate_bench_connections(url)
        for proc, run in zip(procs, sc.runs, strict=True):
            finish(sc, proc, run)
        sc.notes.insert(0, f"{kills} pg_terminate_backend rounds cut {cut} bench connections")
        sc.figures = tally(sc)  # before the throwaway server stops
    return sc


def load_pg_study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=sqlalchemy_url(url))


# -- disk-full ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(tmp: Path, size: str = "16m"):
    mount_point = tmp / "fs"
    mount_point.mkdir()
    try:
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise Skip("no mount command to mount a tmpfs with") from None
    if p.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system refuses (ENOSPC)."""
    filler = folder / "filler"
    chunk = b"\xff" * 65536
    with open(filler, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler


def rows_written(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("trials/*.parquet"))


def disk_full(tmp: Path, rng: random.Random, fills: int = 2) -> Scenario:
    with small_tmpfs(tmp) as fs:
        spec, log = write_spec(tmp, "faults-disk")
        sc = Scenario("disk-full", spec, log, [fs / "results"])
        for i in range(fills):
            proc = start_sweep(sc, sc.folders[0], f"d{i}", workers=2)
            run = sc.runs[-1]
            # Fill once this run has written a few more rows (somewhere in the sweep).
            target = rows_written(sc.folders[0]) + rng.randint(1, TRIALS // (fills + 1))
            wait_until(lambda t=target: rows_written(sc.folders[0]) >= t, 120, proc)
            filler = None
            if proc.poll() is None:
                filler = fill(fs)
                run.cut = "disk full"
            finish(sc, proc, run)
            if filler is not None:
                if run.rc != 75:
                    sc.notes.append(f"run {run.label}: exit {run.rc} on a full disk, not 75")
                filler.unlink()
        proc = start_sweep(sc, sc.folders[0], "final", workers=2)
        finish(sc, proc, sc.runs[-1])
        sc.figures = tally(sc)  # before the tmpfs goes
    return sc


# -- the count ---------------------------------------------------------------------------


def readable(path: Path) -> bool:
    import polars as pl
    import pyarrow.parquet as pq

    try:
        pq.read_table(path)
        pl.read_parquet(path)
    except Exception:  # any reader's refusal is what is counted
        return False
    return True


def rows_per_key(sc: Scenario) -> tuple[Counter, Counter, list[Path]]:
    """Rows per trial_key and per status across all folders, and unreadable files."""
    import pyarrow.parquet as pq

    rows: Counter = Counter()
    statuses: Counter = Counter()
    unreadable: list[Path] = []
    for folder in sc.folders:
        sweep = folder / load_spec(sc.spec, check_workloads=False).name
        for path in sorted(sweep.glob("steps/*.parquet")):
            if not readable(path):
                unreadable.append(path)
        for path in sorted(sweep.glob("trials/*.parquet")):
            if not readable(path):
                unreadable.append(path)
                continue
            table = pq.read_table(path, columns=["trial_key", "status"]).to_pydict()
            rows.update(table["trial_key"])
            statuses.update(table["status"])
    return rows, statuses, unreadable


def study_results(sc: Scenario) -> tuple[Counter | None, str]:
    """Results per bench_key in the Optuna study, as a fresh process loads it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = load_spec(sc.spec, check_workloads=False).name
    try:
        if sc.storage:
            study = load_pg_study(sc.storage, name)
        else:
            backend = optuna.storages.journal.JournalFileBackend(
                str(sc.folders[0] / name / "optuna.journal")
            )
            study = optuna.load_study(
                study_name=name, storage=optuna.storages.JournalStorage(backend)
            )
        trials = study.get_trials()
    except Exception as exc:  # a study that does not load is the finding
        return None, f"{type(exc).__name__}: {exc}"
    done = ("ok", "oom", "diverged", "failed")
    return Counter(
        t.user_attrs["bench_key"] for t in trials if t.user_attrs.get("bench_status") in done
    ), ""


def rerun_counts(sc: Scenario, key_of: dict[int, str]) -> tuple[int, Counter, int]:
    """Trainings; re-runs explained by a cut run, by kind of cut; re-runs not explained.
    A key's re-runs are expected up to the number of its trainings in runs that were cut
    (order-free: a worker of a killed run may log after the next run started)."""
    cut_of = {r.label: r.cut for r in sc.runs}
    per_key: dict[str, list[str]] = {}
    log = trainings(sc.log)
    for tag, label in log:
        per_key.setdefault(key_of[tag], []).append(label)
    expected: Counter = Counter()
    unexpected = 0
    for labels in per_key.values():
        extra = len(labels) - 1
        cuts = [cut_of.get(label, "") for label in labels if cut_of.get(label, "")]
        explained = cuts[:extra]
        expected.update(explained)
        unexpected += extra - len(explained)
    return len(log), expected, unexpected


def tally(sc: Scenario) -> dict:
    spec = load_spec(sc.spec, check_workloads=False)
    key_of = {pt.config.workload_options["tag"]: pt.key for pt in spec.points}
    rows, statuses, unreadable = rows_per_key(sc)
    results, study_error = study_results(sc)
    n_trainings, expected, unexpected = rerun_counts(sc, key_of)
    temp = [p for f in sc.folders for p in f.rglob(".*.tmp")]
    per_run = Counter(label for _, label in trainings(sc.log))
    return {
        "configurations": len(key_of),
        "trainings": n_trainings,
        "re-runs after kill -9 (expected)": expected["kill -9"],
        "re-runs after a full disk (expected)": expected["disk full"],
        "re-runs not explained by a cut": unexpected,
        "trials rows, all folders": sum(rows.values()),
        "duplicates (keys with >1 row)": sum(1 for n in rows.values() if n > 1),
        "lost (keys with no row)": sum(1 for k in key_of.values() if k not in rows),
        "unreadable files": len(unreadable) + (1 if results is None else 0),
        "keys with != 1 result in the study": (
            "study does not load" if results is None
            else sum(1 for k in key_of.values() if results.get(k, 0) != 1)
        ),
        "rows not ok": sum(n for s, n in statuses.items() if s != "ok"),
        "temporary files left": len(temp),
        "runs: exit (trainings)": "; ".join(
            f"{r.label} {'killed' if r.rc == -signal.SIGKILL else r.rc} ({per_run[r.label]})"
            for r in sc.runs
        ),
        "_study_error": study_error,
        "_unreadable": unreadable,
    }  # fmt: skip


def holds(figures: dict) -> bool:
    return (
        figures["duplicates (keys with >1 row)"] == 0
        and figures["lost (keys with no row)"] == 0
        and figures["unreadable files"] == 0
        and figures["re-runs not explained by a cut"] == 0
        and figures["keys with != 1 result in the study"] == 0
    )


def report(sc: Scenario, figures: dict) -> None:
    print(f"\n{sc.name}: {sc.spec.name}, storage {sc.storage or 'embedded journal'}")
    print(text_table(["", "value"], [(k, v) for k, v in figures.items() if not k.startswith("_")]))
    for note in sc.notes:
        print(f"  note: {note}")
    if figures["_study_error"]:
        print(f"  note: the study did not load: {figures['_study_error']}")
    for path in figures["_unreadable"]:
        print(f"  note: unreadable: {path}")


# -- main --------------------------------------------------------------------------------


def scenario_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}"
            )
    return names


def run_scenario(name: str, tmp: Path, args: argparse.Namespace) -> bool | None:
    """True / False: the claim held / did not; None: skipped."""
    rng = random.Random(f"{args.seed}-{name}")
    t0 = time.monotonic()
    try:
        if name == "journal-kill":
            sc = journal_kill(tmp, rng, args.kills)
        elif name == "pg-kill":
            sc = pg_kill(tmp, rng, args.kills, args.postgres_url)
        else:
            sc = disk_full(tmp, rng)
    except Skip as why:
        print(f"\n{name}: skipped: {why}")
        return None
    figures = {**sc.figures, "wall": f"{time.monotonic() - t0:.0f} s"}
    report(sc, figures)
    return holds(figures)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5, metavar="N",
                   help="kill -9s of the coordinator (journal-kill) and rounds of "
                   "pg_terminate_backend (pg-kill) per scenario (default 5)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the moments of the faults")
    p.add_argument("--scenarios", type=scenario_list, default=list(SCENARIOS),
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)")  # fmt: skip
    p.add_argument("--postgres-url", metavar="URL",
                   help="a server to use for pg-kill (default: a throwaway cluster)")  # fmt: skip
    args = p.parse_args()
    if args.kills < 0:
        p.error(f"--kills {args.kills}: must be 0 or more")
    print(
        f"{TRIALS}-trial sweep, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, seed {args.seed}, kills {args.kills}"
    )
    verdicts = {}
    for name in args.scenarios:
        with tempfile.TemporaryDirectory(prefix=f"bench-faults-{name}-") as tmp:
            verdicts[name] = run_scenario(name, Path(tmp), args)
    ran = {k: v for k, v in verdicts.items() if v is not None}
    failed = [k for k, v in ran.items() if not v]
    if failed:
        verdict = f"claim broken in: {', '.join(failed)}"
    else:
        verdict = "nothing lost, nothing trained twice" if ran else "nothing measured"
    print(f"\n{len(ran)} scenario(s) ran, {len(verdicts) - len(ran)} skipped; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
