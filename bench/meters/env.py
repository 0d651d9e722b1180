"""Environment identity: what machine, software and commit produced a result.

Every trial row carries ``env_id``, a stable hash of the record below; the full record is
written once per id as ``<results>/env/<env_id>.json`` (pytest-benchmark's machine_info and
asv's machine.json in spirit). Two runs with the same ``env_id`` ran the same software
versions on the same kind of machine at the same commit. The hostname is hashed (results
get pasted into pull requests); nothing time-dependent (clock, load, free memory) enters
the hash, so it is stable across runs. Uncommitted edits change it too: the record holds
a hash of ``git diff HEAD`` and one of bench's own source files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions change what bench measures or how it stores it.
PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "optuna", "scipy", "seaborn", "nvidia-ml-py")

# Fields left out of env_id: descriptive, but a change in them does not make results from
# the same machine and software incomparable.
_NOT_HASHED = ("env_schema",)

ENV_SCHEMA = 1


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """Commit, dirty flag and a hash of the uncommitted diff of the git work tree holding
    ``path`` (default: bench's own source); all None outside git or without a git
    executable. The diff hash (None when clean) tells two different dirty trees at the
    same commit apart: without it they shared an env_id."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    state: dict[str, Any] = {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(where), *args],
                capture_output=True,
                text=True,
                errors="surrogateescape",
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if commit is None:
        return state
    state["git_commit"] = commit.strip()
    # Tracked files only: results/ and caches are untracked or ignored, and a sweep that
    # writes its output inside the repo must not flip its own flag.
    status = git("status", "--porcelain", "--untracked-files=no")
    state["git_dirty"] = None if status is None else bool(status.strip())
    if state["git_dirty"]:
        diff = git("diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
        if diff is not None:
            data = diff.encode("utf-8", "surrogateescape")
            state["git_diff_sha256"] = hashlib.sha256(data).hexdigest()[:16]
    return state


def source_sha256(workload: str | None = None) -> str:
    """Hash of the code that trains: every ``.py`` file of the installed ``bench``
    package, plus the file of a ``module:function`` workload when it can be found
    without importing it. Unlike the git commit it sees uncommitted edits, and it works
    where bench is installed from a wheel."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    files = sorted(root.rglob("*.py"))
    if workload and ":" in workload:
        try:
            found = importlib.util.find_spec(workload.split(":", 1)[0])
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and os.path.isfile(found.origin):
            files.append(Path(found.origin))
    h = hashlib.sha256()
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode())
        h.update(b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def _torch_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cuda": None, "cudnn": None, "devices": []}
    try:
        import torch
    except ImportError:
        return info
    info["cuda"] = torch.version.cuda
    try:
        info["cudnn"] = (
            torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        )
    except Exception:  # noqa: BLE001
        info["cudnn"] = None
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": p.name,
                    "total_memory_bytes": int(p.total_memory),
                    "capability": f"{p.major}.{p.minor}",
                    "multiprocessors": int(p.multi_processor_count),
                }
            )
    return info


@functools.cache
def _environment_cached() -> dict[str, Any]:
    from bench.meters.nvml import driver_version

    torch_info = _torch_info()
    return {
        "env_schema": ENV_SCHEMA,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os": platform.system(),
        "os_release": platform.release(),
        "machine": platform.machine(),
        "hostname_sha256": hashlib.sha256(platform.node().encode()).hexdigest()[:16],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable_cores": _usable_cores(),
        "memory_total_bytes": _memory_total_bytes(),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "torch_cuda": torch_info["cuda"],
        "cudnn": torch_info["cudnn"],
        "nvidia_driver": driver_version() if torch_info["devices"] else None,
        "cuda_devices": torch_info["devices"],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **git_state(),
        # Also where bench runs from a wheel (no git): the code that trains, as hashed.
        "bench_source_sha256": source_sha256(),
    }


def environment(*, refresh: bool = False) -> dict[str, Any]:
    """The environment record (a fresh dict each call; collected once per process unless
    ``refresh``: git and the driver take tens of milliseconds, and a process's software
    does not change under it)."""
    if refresh:
        _environment_cached.cache_clear()
    return json.loads(json.dumps(_environment_cached()))


def env_id(env: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of the record (canonical JSON, keys sorted)."""
    hashed = {k: v for k, v in env.items() if k not in _NOT_HASHED}
    blob = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_environment(folder: str | Path, env: dict[str, Any]) -> Path:
    """Write ``<folder>/env/<env_id>.json`` atomically (once: same id, same content)."""
    from bench.store import write_bytes_atomic

    path = Path(folder) / "env" / f"{env_id(env)}.json"
    data = (
        json.dumps({"env_id": env_id(env), **env}, indent=2, sort_keys=True, default=str) + "\n"
    ).encode()
    try:
        if path.read_bytes() == data:
            return path
    except OSError:
        pass
    write_bytes_atomic(data, path)
    return path


def describe(env: dict[str, Any]) -> str:
    """One line for logs: python, torch, device, commit."""
    devices = ", ".join(d["name"] for d in env.get("cuda_devices") or []) or "cpu"
    commit = (env.get("git_commit") or "no-git")[:10] + ("+dirty" if env.get("git_dirty") else "")
    torch_v = (env.get("packages") or {}).get("torch")
    return f"python {env.get('python')}, torch {torch_v}, {devices}, {commit}"
