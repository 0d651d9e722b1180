"""What a probe is: the trial configuration it runs at (b, k), and the keys that say
when a stored probe answers the same question.

"Same" includes what the answer depends on besides the configuration: the device model
and its total memory, the torch and CUDA versions, and a hash of bench's own source
(and of a ``module:function`` workload's file), so probes taken on another card,
another torch, or before a memory-saving change are not reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SearchSpec:
    """Everything that defines a probe except b, k and the capacity."""

    base: Any  # TrialConfig: workload, options, precision, optimizer, ... (batch ignored)
    steps: int = 3
    evaluate: bool = True
    full_length: bool = True  # token workloads: every sequence at seq_len (see probe_options)
    identity: str = ""  # canonical JSON of the machine + software (see probe_identity)
    # Set: the searched integer is a stack's size S (members trained together,
    # bench.stack) at this micro-batch, not the micro-batch.
    stack_batch: int | None = None

    def searched(self, n: int) -> tuple[int, int | None]:
        """(micro-batch, stack size or None) of the probe at searched value ``n``."""
        return (n, None) if self.stack_batch is None else (self.stack_batch, n)

    def probe_config(
        self,
        b: int,
        k: int = 1,
        *,
        steps: int | None = None,
        timing_warmup: int | None = None,
        evaluate: bool | None = None,
    ):
        steps = self.steps if steps is None else steps
        changes: dict[str, Any] = dict(
            batch_size=b,
            accumulation_steps=k,
            epochs=None,
            max_steps=steps,
            mode="mbgd",
            # An evaluation at the last step (chunks of b, like the training loop's), or
            # none at all: eval_every past the last step never fires.
            eval_every=steps if (self.evaluate if evaluate is None else evaluate) else steps + 1,
            patience=None,
            time_limit_s=None,
        )
        if timing_warmup is not None:
            changes["timing_warmup_steps"] = timing_warmup
        changes["workload_options"] = probe_options(self.base, self.full_length)
        return self.base.replace(**changes)


def probe_options(base, full_length: bool) -> dict:
    """Workload options for probes. Token workloads with ``seq_len`` and ``min_len``
    (char-lm) get ``min_len = seq_len + 1``: every document then fills the whole
    window, so a probe sees the longest sequences the workload can produce (char-lm
    pads to seq_len + 1 anyway; this keeps it true if batches are ever trimmed)."""
    options = dict(base.workload_options)
    if not full_length:
        return options
    from bench.workloads import workload_options

    accepted = workload_options(base.workload)
    if "seq_len" in accepted and "min_len" in accepted:
        seq_len = options.get("seq_len", accepted["seq_len"])
        if isinstance(seq_len, int) and not isinstance(seq_len, bool):
            options["min_len"] = seq_len + 1
    return options


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def probe_key(
    config, capacity_bytes: int, device: str, kind: str, identity: str = "", stack_size=None
) -> str:
    key = {
        "config": config.to_dict(),
        "capacity": capacity_bytes,
        "device": device,
        "kind": kind,
        "identity": identity,
    }
    if stack_size is not None:  # absent otherwise: the keys of stored probes stay
        key["stack_size"] = stack_size
    return _digest(key)


def search_key(spec: SearchSpec, capacity_bytes: int, device: str) -> str:
    cfg = spec.probe_config(1).to_dict()
    cfg.pop("batch_size")
    key = {"config": cfg, "capacity": capacity_bytes, "device": device, "identity": spec.identity}
    if spec.stack_batch is not None:
        key["stack_batch"] = spec.stack_batch
    return _digest(key)


def probe_identity(info: dict, workload: str) -> str:
    """What a boundary depends on besides the configuration, as canonical JSON: the
    device model and total memory (from ``measure_baseline``'s child), the torch and
    CUDA versions, and a hash of the code that trains (bench's source and a
    ``module:function`` workload's file). Not the git commit: a README commit must not
    throw away an hour of probes, while an uncommitted edit to the loop must."""
    from bench.meters.env import source_sha256

    ident = {
        "device_name": info.get("name"),
        "total_bytes": info.get("total_bytes"),
        "torch": info.get("torch"),
        "cuda": info.get("cuda"),
        "code_sha256": source_sha256(workload),
    }
    return json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
