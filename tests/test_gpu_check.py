"""scripts/gpu-check on the CPU: a check meant for scarce GPU minutes must not fail on its
own code (its trial loop and its table), so that code runs here wherever CUDA is absent."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check"


def _module():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_trials_and_table_run_on_the_cpu():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-tests", "--device", "cpu", "--max-steps", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("workload "))
    body = [line for line in lines[header + 1 :] if set(line) - {"-", " "}]  # past the rule
    rows = [line.split() for line in body[:3]]
    assert [r[0] for r in rows] == ["seed-mlp", "teacher-mlp", "char-lm"]
    assert all(r[-1] == "ok" and r[2] == "cpu" for r in rows)
    assert "trials: all ok" in lines[-1]


def test_table_formats_a_gpu_row_with_every_meter_present(capsys):
    gpu_check = _module()
    row = {
        "workload": "char-lm",
        "precision": "bf16",
        "device": "NVIDIA H200",
        "samples_per_s": 123456.7,
        "peak_allocated_bytes": 3 * 2**30,
        "peak_reserved_bytes": 4 * 2**30,
        "nvml_peak_used_bytes": 5 * 2**30,
        "nvml_baseline_used_bytes": 2**30,
        "nvml_process_peak_bytes": 4 * 2**30 + 2**29,
        "nvml_samples": 812,
        "energy_j": 1234.5,
        "energy_method": "counter",
        "energy_j_per_sample": 0.01,
        "mfu": 0.4123,
        "status": "ok",
    }
    empty = {key: None for key in row} | {
        "workload": "seed-mlp",
        "precision": "fp32",
        "status": "ok",
    }
    gpu_check.print_table([row, empty])
    out = capsys.readouterr().out.splitlines()
    full = next(line for line in out if line.startswith("char-lm")).split()
    assert full[2] == "H200" and full[3] == "123,457"
    assert full[4:7] == ["3.00G", "4.00G", "5.00G"] and full[7] == "(+4.00G)"
    assert full[8] == "4.50G" and full[9] == "812"
    assert full[10:12] == ["1234.5", "c"] and full[12] == "1.00e-02" and full[13] == "41.23%"
    bare = next(line for line in out if line.startswith("seed-mlp")).split()
    assert bare[2:] == ["-"] * 10 + ["ok"]
