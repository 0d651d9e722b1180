"""bench.forkserver_init: a Ctrl-C while the forkserver imports torch prints nothing,
and the server's children still get KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The parent: a forkserver whose preload list is bench's guard (or not) and then a slow
# import standing in for torch. The slow module writes the server's pid and sleeps; the
# test interrupts the server in that window. Then one child checks what SIGINT does.
PARENT = textwrap.dedent(
    """
    import multiprocessing as mp, os, signal, sys, time

    def child(q):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            q.put("no interrupt")
        except KeyboardInterrupt:
            q.put("KeyboardInterrupt")

    if __name__ == "__main__":
        preload = sys.argv[1].split(",")
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(preload)
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        print(q.get(timeout=60), flush=True)
        p.join(10)
    """
)

SLOW = textwrap.dedent(
    """
    import os, pathlib, time
    pathlib.Path(os.environ["MARKER"]).write_text(str(os.getpid()))
    time.sleep(2.0)
    """
)


def _run(tmp_path: Path, preload: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "slow_import.py").write_text(SLOW)
    (tmp_path / "parent.py").write_text(PARENT)
    marker = tmp_path / "server.pid"
    env = {
        **os.environ,
        "MARKER": str(marker),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), ",".join(preload)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"the forkserver never reached the slow import: {proc.communicate()}")
        time.sleep(0.02)
    os.kill(int(marker.read_text()), signal.SIGINT)  # Ctrl-C, as the server sees it
    out, err = proc.communicate(timeout=90)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _default_sigint() -> None:
    """SIGINT as a terminal's foreground process has it: a run started in the background
    (`cmd &` in a script) inherits SIGINT ignored, and Python then installs no handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_during_preload_prints_no_traceback_and_children_still_interrupt(tmp_path):
    done = _run(tmp_path, ["bench.forkserver_init", "slow_import"])
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == "KeyboardInterrupt"  # children: as Python's default
    assert done.returncode == 0, done.stderr


def test_without_the_guard_the_server_prints_a_traceback(tmp_path):
    # What the guard is for: CPython's forkserver ignores SIGINT only after preloading.
    done = _run(tmp_path, ["slow_import"])
    assert "KeyboardInterrupt" in done.stderr and "Traceback" in done.stderr


def test_importing_the_guard_elsewhere_changes_nothing():
    # Only the forkserver installs the handler: a parent that imported it by accident
    # must still get KeyboardInterrupt on Ctrl-C.
    code = (
        "import signal, bench.forkserver_init as f; "
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    assert out.stdout.strip() == "True"


def test_bench_preloads_the_guard_first():
    from bench.procs import PRELOAD

    assert PRELOAD[0] == "bench.forkserver_init"
