"""Training FLOPs, counted once per trial, and the device peaks that turn them into MFU.

Counting: ``torch.utils.flop_counter.FlopCounterMode`` around a real forward + backward
of one micro-batch. It counts the matrix products (mm, addmm, bmm, convolution, attention)
by their shapes, which is the convention MFU uses (PaLM, Chowdhery et al. 2022, appendix
B: the elementwise work and the optimizer update are left out). The pass runs on the
``meta`` device: the same graph with shapes only, so it allocates nothing, takes no time
on the accelerator, consumes no random numbers and leaves the real model untouched. Where
the meta pass fails (a data-dependent shape, say), a deep copy of the model runs on its
device instead, with the memory meters paused (bench.meters.excluded) and the RNG forked.

MFU = achieved FLOP/s / the device's dense peak for the precision in use. Peaks are the
vendor datasheets' figures; sparse figures ("with sparsity", 2:4 structured) are halved,
because dense training cannot use sparsity. Override with ``peak_tflops`` in the config.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

# Dense peak TFLOP/s by precision. "tf32" is what fp32 matmuls get when torch allows TF32
# (torch.set_float32_matmul_precision("high"|"medium")); "fp32" is the non-tensor-core rate.
# "fp64" is the FP64 tensor-core rate where the part has one (cuBLAS DGEMM uses it).
# None: the datasheet gives no figure for that precision.
PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    # NVIDIA H200 Tensor Core GPU datasheet (2024), SXM column; sparse TF32 989, BF16/FP16 1,979.
    "H200 SXM": {"fp64": 67.0, "fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    # Same datasheet, H200 NVL column; sparse TF32 835, BF16/FP16 1,671.
    "H200 NVL": {"fp64": 60.0, "fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    # NVIDIA H100 Tensor Core GPU datasheet, SXM column; sparse TF32 989, BF16/FP16 1,979.
    "H100 SXM": {"fp64": 67.0, "fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    # Same datasheet, PCIe column; sparse TF32 756, BF16/FP16 1,513.
    "H100 PCIe": {"fp64": 51.0, "fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    # Same datasheet, H100 NVL column (per GPU); sparse TF32 835, BF16/FP16 1,671.
    "H100 NVL": {"fp64": 60.0, "fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    # NVIDIA A100 Tensor Core GPU datasheet (40/80 GB, SXM and PCIe alike): FP64 TC 19.5,
    # FP32 19.5, TF32 156 (312 sparse), BF16/FP16 312 (624 sparse).
    "A100": {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366 sparse), BF16/FP16 362.05 (733
    # sparse: the dense figure is the datasheet's own, not half the sparse one); no FP64.
    "L40S": {"fp64": None, "fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05},
    # NVIDIA L4 datasheet: FP32 30.3, TF32 120 sparse, BF16/FP16 242 sparse; no FP64 figure.
    "L4": {"fp64": None, "fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    # NVIDIA A10 datasheet: FP32 31.2, TF32 125 sparse, BF16/FP16 250 sparse.
    "A10": {"fp64": None, "fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    # NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 column: FP32 82.6;
    # tensor with FP32 accumulate (what torch's bf16/fp16 GEMMs use) 165.2 dense; TF32 82.6.
    "RTX 4090": {"fp64": 1.3, "fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
    # NVIDIA Ampere GA102 whitepaper, RTX 3090 column: FP32 35.6; FP16/BF16 tensor with FP32
    # accumulate 71 dense; TF32 35.6 dense.
    "RTX 3090": {"fp64": 0.56, "fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0},
    # NVIDIA V100 datasheet, SXM2: FP64 7.8, FP32 15.7, tensor (FP16) 125; no BF16 hardware.
    "V100 SXM2": {"fp64": 7.8, "fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0},
    # Same datasheet, PCIe: FP64 7, FP32 14, tensor 112.
    "V100 PCIe": {"fp64": 7.0, "fp32": 14.0, "tf32": None, "bf16": None, "fp16": 112.0},
    # NVIDIA T4 datasheet: FP32 8.1, mixed-precision FP16 65; no BF16 hardware.
    "T4": {"fp64": None, "fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65.0},
}

# torch.cuda.get_device_name() spellings -> table rows; first match wins, specific first.
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"h200\s*nvl", "H200 NVL"),
    (r"h200", "H200 SXM"),
    (r"h100\s*nvl", "H100 NVL"),
    (r"h100\s*pcie", "H100 PCIe"),
    (r"h100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3"
    (r"a100", "A100"),  # "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"
    (r"l40s", "L40S"),
    (r"\bl4\b", "L4"),
    (r"\ba10\b(?!0)", "A10"),
    (r"rtx\s*4090(?!\s*d)", "RTX 4090"),
    (r"rtx\s*3090(?!\s*ti)", "RTX 3090"),
    (r"v100[-\s]*sxm", "V100 SXM2"),
    (r"v100[-\s]*pcie", "V100 PCIe"),
    (r"\bt4\b", "T4"),
]


def device_row(name: str) -> str | None:
    """The PEAK_TFLOPS row for a device name, or None if it is not a known part."""
    lowered = name.lower()
    for pattern, row in _NAME_PATTERNS:
        if re.search(pattern, lowered):
            return row
    return None


def matmul_precision(precision: str) -> str | None:
    """The peak column a run's matmuls use: fp32 runs may be on TF32 tensor cores.
    None when torch will not say (mfu is then null, never a guess)."""
    if precision != "fp32":
        return precision
    import torch

    # torch >= 2.9's per-backend setting reflects the legacy switches too; the legacy
    # getters raise once the new API has been used ("mix of the legacy and new APIs").
    current = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if current is not None:
        return "tf32" if current == "tf32" else "fp32"
    try:
        tf32 = (
            torch.get_float32_matmul_precision() != "highest"
            or torch.backends.cuda.matmul.allow_tf32
        )
    except RuntimeError:
        return None
    return "tf32" if tf32 else "fp32"


def peak_flops_per_s(
    device, precision: str, *, override_tflops: float | None = None
) -> float | None:
    """Dense peak FLOP/s of ``device`` for ``precision`` (bench precision names), or None.

    ``override_tflops`` (config ``peak_tflops``) wins for any device, CPUs included.
    Unknown devices, CPUs and precisions the datasheet does not list give None (mfu null).
    """
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    row = device_row(torch.cuda.get_device_name(device))
    if row is None:
        return None
    tflops = PEAK_TFLOPS[row].get(matmul_precision(precision))
    return None if tflops is None else tflops * 1e12


def mfu(flops_per_s: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation (PaLM appendix B): achieved / peak; None if either is unknown."""
    if flops_per_s is None or peak is None or peak <= 0:
        return None
    return flops_per_s / peak


@dataclass(frozen=True)
class FlopCount:
    flops: float | None  # forward + backward of one micro-batch
    units: int | None  # samples (or tokens) in that micro-batch
    method: str | None  # "meta" or "copy"
    note: str | None = None

    @property
    def per_unit(self) -> float | None:
        if self.flops is None or not self.units:
            return None
        return self.flops / self.units


def _units(workload, batch) -> int:
    units = workload.units(batch)
    return int(units.item()) if hasattr(units, "item") else int(units)


def _fwd_bwd_flops(workload, model, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        workload.loss_sum(model, batch).backward()
    return float(counter.get_total_flops())


def _signature(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _meta_count(workload, model, batch) -> float:
    import torch

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        meta_model = workload.make_model()
    if _signature(meta_model) != _signature(model):
        raise ValueError("make_model() builds a different architecture than the model given")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        meta_model = meta_model.to(dtype=dtype)
    meta_model.train(model.training)
    meta_batch = tuple(torch.empty_like(t, device="meta") for t in batch)
    return _fwd_bwd_flops(workload, meta_model, meta_batch)


def _copy_count(workload, model, batch) -> float:
    import torch

    from bench.meters import excluded

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    devices = [device.index or 0] if device.type == "cuda" else []
    with excluded(), torch.random.fork_rng(devices=devices):
        twin = copy.deepcopy(model)
        try:
            return _fwd_bwd_flops(workload, twin, batch)
        finally:
            del twin


def count_train_flops(workload, model, batch) -> FlopCount:
    """FLOPs of one forward + backward over ``batch``; never raises for a bad model."""
    try:
        units = _units(workload, batch)
    except Exception as exc:  # noqa: BLE001
        return FlopCount(
            None, None, None, f"flops: cannot count units: {type(exc).__name__}: {exc}"
        )
    try:
        return FlopCount(_meta_count(workload, model, batch), units, "meta")
    except Exception as meta_exc:  # noqa: BLE001 - fall back to a real pass
        reason = f"{type(meta_exc).__name__}: {str(meta_exc).splitlines()[0][:120] if str(meta_exc) else ''}"
    try:
        flops = _copy_count(workload, model, batch)
    except Exception as exc:  # noqa: BLE001
        return FlopCount(
            None, units, None, f"flops: not counted ({type(exc).__name__}: {exc})"[:300]
        )
    return FlopCount(flops, units, "copy", f"flops: meta pass failed ({reason}); counted on a copy")


def train_flops_per_sample(
    workload, model, batch, precision: str | None = None, *, device=None
) -> float | None:
    """Training FLOPs (forward + backward) per unit: per sample, or per target token for
    token workloads (``workload.unit``), so multiply by tokens/s, not samples/s, there.

    ``precision`` and ``device`` do not change the count (FLOPs follow from shapes; the
    pass runs on the meta device); they are accepted so callers pass what they have.
    None when counting failed (count_train_flops gives the reason).
    """
    return count_train_flops(workload, model, batch).per_unit
