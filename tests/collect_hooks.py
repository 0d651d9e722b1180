"""A workload for tests/test_collect.py, loaded by sweep workers as ``collect_hooks:NAME``.

``shared`` makes two coordinators of one sweep both run trials, whatever their start-up
times on a loaded machine: each trial logs its worker's pid, then waits until a second
pid is in the log (or ``wait_s`` passes), so neither coordinator can finish the grid alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from bench.workloads.seed_mlp import build as seed_mlp


def shared(*, samples: int | None = None, tag: int = 0, log: str = "", wait_s: float = 60.0):
    w = seed_mlp(samples=samples, val_samples=50)
    inner = w.make_model

    def make_model():
        if torch.empty(0).device.type == "meta":  # the FLOP counter's copy: no side effects
            return inner()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{tag} {os.getpid()}\n".encode())
        os.close(fd)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            pids = {line.split()[1] for line in Path(log).read_text().splitlines() if line.strip()}
            if len(pids) >= 2:
                break
            time.sleep(0.05)
        return inner()

    w.make_model = make_model
    return w
