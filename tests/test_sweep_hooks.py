"""Workloads for the sweep tests, loaded by worker processes as ``test_sweep_hooks:NAME``
(pytest puts tests/ on sys.path; subprocess tests add it to PYTHONPATH).

Each misbehaves honestly: ``hog`` really asks the allocator for more than the memory cap,
``killer`` really SIGKILLs its own process, ``raiser`` really raises mid-training,
``signaller`` really sends its own process a signal, ``exiter`` really calls
``os._exit``. No test fakes a status. ``counted`` appends one line per training run to a log, so a test can
count how many times each grid point actually ran.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from bench.workloads.seed_mlp import build as seed_mlp


def _real() -> bool:
    """False while the FLOP counter builds a copy of the model on the meta device."""
    return torch.empty(0).device.type != "meta"


def _with_model(workload, make_model):
    workload.make_model = make_model
    return workload


def counted(*, samples: int | None = None, tag: int = 0, log: str = "", delay: float = 0.0):
    w = seed_mlp(samples=samples, val_samples=50)
    inner = w.make_model

    def make_model():
        if log and _real():
            # One write(2) with O_APPEND: lines from concurrent processes never interleave.
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, f"{tag} {os.getpid()}\n".encode())
            os.close(fd)
        if delay and _real():
            time.sleep(delay)
        return inner()

    return _with_model(w, make_model)


class _Hog(nn.Module):
    """A linear model whose forward asks for ``alloc_bytes`` more (a real allocation)."""

    def __init__(self, alloc_bytes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 2)
        self.alloc_bytes = alloc_bytes

    def forward(self, x):
        if x.device.type != "meta":
            # On the input's device: the CPU allocator under RLIMIT_DATA, or CUDA's under
            # the memory fraction. ones(), not empty(): the pages are really touched.
            extra = torch.ones(self.alloc_bytes // 4, dtype=torch.float32, device=x.device)
            x = x + extra[:1].sum() * 0
        return self.fc(x)


def hog(*, samples: int | None = None, alloc_mib: int = 4096):
    w = seed_mlp(samples=samples, val_samples=50)
    return _with_model(w, lambda: _Hog(alloc_mib * 2**20))


def killer(*, samples: int | None = None):
    w = seed_mlp(samples=samples, val_samples=50)

    def make_model():
        if _real():
            os.kill(os.getpid(), signal.SIGKILL)
        return nn.Linear(10, 2)

    return _with_model(w, make_model)


def signaller(*, samples: int | None = None, signal_name: str = "SIGINT"):
    """Sends its own worker ``signal_name`` as the model is built: what a Ctrl-C or a
    ``kill -TERM`` aimed at that one process does."""
    w = seed_mlp(samples=samples, val_samples=50)
    inner = w.make_model

    def make_model():
        if _real():
            os.kill(os.getpid(), signal.Signals[signal_name])
            time.sleep(5)  # the signal lands here (SIGTERM: the process is gone)
        return inner()

    return _with_model(w, make_model)


def exiter(*, samples: int | None = None, code: int = 137):
    """Ends its process with ``os._exit(code)``: no signal, whatever the code says."""
    w = seed_mlp(samples=samples, val_samples=50)

    def make_model():
        if _real():
            os._exit(code)
        return nn.Linear(10, 2)

    return _with_model(w, make_model)


class _Raiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 2)
        self.calls = 0

    def forward(self, x):
        if x.device.type != "meta":
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("raiser: deliberate failure at the third forward pass")
        return self.fc(x)


def raiser(*, samples: int | None = None):
    w = seed_mlp(samples=samples, val_samples=50)
    return _with_model(w, _Raiser)


def flaky(*, samples: int | None = None, marker: str = ""):
    """Fails the first time (creating ``marker``), works afterwards."""
    w = seed_mlp(samples=samples, val_samples=50)
    inner = w.make_model

    def make_model():
        path = Path(marker)
        if _real() and not path.exists():
            path.write_text("failed once\n")
            raise RuntimeError("flaky: first attempt fails")
        return inner()

    return _with_model(w, make_model)


_KEPT: list = []  # memory a ``grower`` trial keeps after it ends


def grower(*, samples: int | None = None):
    """Leaves its worker above the CPU memory cap: lifts the cap (RLIMIT_DATA) and keeps
    a buffer (untouched pages: counted in VmData, not RSS) past it, as a trial that keeps
    memory in a global would. The worker cannot put its cap back afterwards."""
    import resource

    from bench.procs import lift_cpu_cap, proc_status_bytes

    w = seed_mlp(samples=samples, val_samples=50)
    inner = w.make_model

    def make_model():
        if _real():
            limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
            if limit != resource.RLIM_INFINITY:
                lift_cpu_cap()
                used = proc_status_bytes("VmData") or 0
                _KEPT.append(bytearray(max(0, limit - used) + 64 * 2**20))
        return inner()

    return _with_model(w, make_model)


def test_stopping_workers_interrupted_while_starting_does_not_raise(tmp_path):
    # Ctrl-C during Process.start(): the worker has a child whose process never started
    # (no pid); stopping must skip it, not fail with "can only join a started process"
    # and a traceback instead of 'bench: interrupted'.
    from types import SimpleNamespace

    from bench.procs import ChildProcess, ChildSetup
    from bench.sweep.pool import Worker, WorkerPool

    spec = SimpleNamespace(name="s", device="cpu", memory_cap_bytes=None)
    pool = WorkerPool(spec, folder=tmp_path, owner="me", log=print)
    never_started = Worker(index=0, env={}, child=ChildProcess(ChildSetup(), name="never"))
    pool.workers = [never_started]
    pool.stop()
    assert never_started.child is None
