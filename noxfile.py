"""Sessions: tests (default), sweep, report, compare, lint, benchmarks, gpu_check.

Torch is installed first and explicitly: where no NVIDIA driver is present we ask for the
exact CPU release that these machines keep on disk (fast, small); where `nvidia-smi`
exists we let pip pick the default CUDA build. BENCH_TORCH overrides either choice
(e.g. BENCH_TORCH="torch==2.14.1").
"""

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

CPU_TORCH = "torch==2.13.0"


def install(session: nox.Session, extras: str = "") -> None:
    torch_spec = os.environ.get("BENCH_TORCH") or (
        "torch" if shutil.which("nvidia-smi") else CPU_TORCH
    )
    session.install(torch_spec)
    session.install("-e", f".{extras}")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (gpu tests skip where CUDA is absent)."""
    install(session, "[dev]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "bench", "tests", "scripts", "noxfile.py")
    session.run("ruff", "format", "--check", "bench", "tests", "noxfile.py")


@nox.session
def sweep(session: nox.Session) -> None:
    """Run a sweep: `nox -s sweep -- experiments/accumulation.toml [--workers 2]`."""
    install(session)
    args = session.posargs or ["experiments/seed.toml"]
    session.run("python", "-m", "bench", "sweep", *args)


@nox.session
def report(session: nox.Session) -> None:
    """Figures and tables for a results folder (default: the newest sweep)."""
    install(session)
    session.run("python", "-m", "bench", "report", *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """The smoke sweep by a base commit's code and by this tree's, seed by seed in
    alternating order on this machine, compared (exit 1 on a regression).

    `nox -s compare` (base: main), `-- --base REF --rounds 6`, `-- -- --threshold 10%`
    (after a second `--`, arguments for bench compare). See scripts/compare_ab.py.
    """
    install(session)
    session.run("python", "scripts/compare_ab.py", *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """The benchmark scripts whose figures docs/benchmarks.md quotes."""
    install(session, "[postgres]")  # bench_faults.py's PostgreSQL scenario
    for script in sorted(os.listdir("scripts")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"scripts/{script}")


@nox.session(name="gpu-check")
def gpu_check(session: nox.Session) -> None:
    """GPU self-check: gpu-marked tests and a small trial per workload, table last."""
    install(session, "[dev]")
    session.run("scripts/gpu-check", external=True)
