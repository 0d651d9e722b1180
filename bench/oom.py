"""OOM boundaries: the largest micro-batch that fits a memory capacity, and the (b, k)
split that reaches a target batch fastest.

``python -m bench oom --workload W [--capacity SIZE ...] [--target-batch B]``

For each capacity, a *probe* at micro-batch b runs N full optimizer steps (forward,
backward, optimizer step with its state allocated, an evaluation pass, and for token
workloads every sequence at full length) in a fresh process under the capacity's cap
(:mod:`bench.isolation`). The search doubles b from a start value until a probe runs
out of memory, then bisects between the last fit and the first OOM to the exact
boundary (or a stated tolerance). From start 1 with boundary b*, doubling takes
floor(log2 b*) + 2 probes and bisecting the interval (2^j, 2^(j+1)) takes j more, so
at most 2*log2(b*) + 2 probes. The search stops at ``--max-batch`` and at the training
set's size. A probe that fails for any reason but memory stops the search with that
error: it would otherwise be read as a (wrong) boundary.

The safety margin is a share of memory, not of batch: "after a 10 % margin" is the
largest b that fits in 90 % of the capacity, found by a second, short search (galloping
from ``floor(b* x 0.9)`` in small steps, then bisecting) under that reduced cap, so the
reported safe batch was itself run, not extrapolated.

Every probe is a row of ``<results>/oom/<name>/probes.parquet``; a probe already there
(same configuration, capacity, device and outcome ok/oom) is reused, so a second run
answers without new probes. "Same" includes what the answer depends on besides the
configuration: the device model and its total memory, the torch and CUDA versions, and
a hash of bench's own source (and of a ``module:function`` workload's file), so probes
taken on another card, another torch, or before a memory-saving change are not reused.
A probe that was killed twice (outside memory pressure, not the cap) is never reused:
the next run measures it again. ``--fresh`` ignores stored probes altogether.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import records
from bench.errors import BenchError, ConfigError

# Name -> arrow type of probes.parquet's columns (bench.records.ProbeRecord).
PROBE_COLUMNS = records.columns(records.ProbeRecord)

DEFAULT_MARGIN_PCT = 10.0


# -- what is probed ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpec:
    """Everything that defines a probe except b, k and the capacity."""

    base: Any  # TrialConfig: workload, options, precision, optimizer, ... (batch ignored)
    steps: int = 3
    evaluate: bool = True
    full_length: bool = True  # token workloads: every sequence at seq_len (see _probe_options)
    identity: str = ""  # canonical JSON of the machine + software (see probe_identity)

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
        changes["workload_options"] = _probe_options(self.base, self.full_length)
        return self.base.replace(**changes)


def _probe_options(base, full_length: bool) -> dict:
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


def probe_key(config, capacity_bytes: int, device: str, kind: str, identity: str = "") -> str:
    return _digest(
        {
            "config": config.to_dict(),
            "capacity": capacity_bytes,
            "device": device,
            "kind": kind,
            "identity": identity,
        }
    )


def search_key(spec: SearchSpec, capacity_bytes: int, device: str) -> str:
    cfg = spec.probe_config(1).to_dict()
    cfg.pop("batch_size")
    return _digest(
        {"config": cfg, "capacity": capacity_bytes, "device": device, "identity": spec.identity}
    )


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


# -- probe storage ----------------------------------------------------------------------


class ProbeStore:
    """``probes.parquet`` of one OOM run: read once, rewritten atomically per probe.
    Rows are dicts of ProbeRecord's columns; a file of an older schema version reads as
    the current one."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "probes.parquet"
        self.rows: list[dict] = self._read() if self.path.exists() else []

    def _read(self) -> list[dict]:
        from bench.store import read_table

        return read_table(self.path, records.ProbeRecord).to_pylist()

    def find(self, key: str) -> dict | None:
        """The latest finished (ok / oom) probe with this key, or None. A probe killed
        by outside pressure is not an answer to keep: the next run measures it again."""
        for row in reversed(self.rows):
            if row.get("probe_key") == key and row.get("outcome") in ("ok", "oom"):
                return None if row.get("killed") else row
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".probes.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, row: dict) -> None:
        """Append one probe row (an undeclared key raises records.RecordError)."""
        from bench.store import write_atomic

        table = records.probes_table([row])  # checked before the lock and the re-read
        with self._locked():
            # Re-read under the lock: another run may have added probes since we read.
            merged = self._read() if self.path.exists() else []
            merged.append(table.to_pylist()[0])
            write_atomic(records.probes_table(merged), self.path)
            self.rows = merged


# -- running probes -----------------------------------------------------------------------


class ProbeFailed(Exception):
    """A probe ended for a reason other than memory: the search cannot go on."""

    def __init__(self, row: dict) -> None:
        self.row = row
        super().__init__(row.get("error") or row.get("outcome"))


@dataclass
class Prober:
    """Runs (or reuses) probes for one spec and one capacity; counts what it did."""

    spec: SearchSpec
    capacity_bytes: int | None  # None: no cap (the device's own memory)
    device: str
    store: ProbeStore
    runner: Callable[..., Any] | None = None  # run_isolated-like; injectable for tests
    timeout_s: float | None = None
    kind: str = "boundary"
    fresh: bool = False  # run every probe, even one stored (--fresh)
    log: Callable[[str], None] | None = None  # one line per new probe (stderr in main)
    probes: int = 0  # probes asked for (new + reused)
    new_probes: int = 0
    rows: list[dict] = field(default_factory=list)

    def run(
        self,
        b: int,
        k: int = 1,
        *,
        steps: int | None = None,
        timing_warmup: int | None = None,
        evaluate: bool | None = None,
    ) -> dict:
        config = self.spec.probe_config(
            b, k, steps=steps, timing_warmup=timing_warmup, evaluate=evaluate
        )
        cap_key = self.capacity_bytes if self.capacity_bytes is not None else 0
        key = probe_key(config, cap_key, self.device, self.kind, self.spec.identity)
        self.probes += 1
        found = None if self.fresh else self.store.find(key)
        if found is not None:
            self.rows.append(found)
            return found
        runner = self.runner
        if runner is None:
            from bench.procs import run_isolated

            runner = run_isolated
        run = runner(config, cap_bytes=self.capacity_bytes, timeout_s=self.timeout_s)
        killed = _killed(run)
        if self.capacity_bytes is not None and killed:
            # Under a cap, running past it is an allocation error inside the probe (ENOMEM
            # under RLIMIT_DATA, OutOfMemoryError under the CUDA fraction), never a kill.
            # A SIGKILL came from outside: the machine's OOM killer while other work
            # fills its memory, or a person. It would pass for a small boundary, so the
            # probe runs once more; killed twice, it stays an OOM and says so.
            first_error = run.result.trial.get("error") or "killed by SIGKILL"
            run = runner(config, cap_bytes=self.capacity_bytes, timeout_s=self.timeout_s)
            trial = run.result.trial
            killed = _killed(run)
            if killed:
                trial["error"] = (trial.get("error") or "") + "; killed again when re-run"
            else:  # the kill is kept on record: it is the evidence of outside pressure
                trial["error"] = "; ".join(
                    filter(None, [trial.get("error"), f"re-run after a first run: {first_error}"])
                )
        row = probe_row(
            run,
            config,
            key=key,
            kind=self.kind,
            capacity=cap_key,
            device=self.device,
            steps=config.max_steps,
        )
        row["search_key"] = search_key(self.spec, cap_key, self.device)
        row["identity_json"] = self.spec.identity or None
        # Only under a cap is a kill outside pressure (not an answer to keep); without one
        # it is the machine's own memory running out: an OOM like any other, reused.
        row["killed"] = killed and self.capacity_bytes is not None
        self.new_probes += 1
        self.store.add(row)
        self.rows.append(row)
        if self.log is not None:  # progress: a search of many probes can take minutes
            from bench.config import format_bytes

            cap = "no cap" if self.capacity_bytes is None else format_bytes(self.capacity_bytes)
            self.log(
                f"oom: {self.kind} probe b={b} k={k} under {cap}: {row['outcome']} "
                f"({run.wall_s:.1f} s)"
            )
        return row


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress_wanted() -> bool:
    """Progress lines for a person at a terminal; scripts and CI logs get only the
    result (and bad input stays one line on stderr)."""
    return sys.stderr.isatty()


def _killed(run) -> bool:
    """True when the probe process died by SIGKILL before reporting (not one that
    reported and was then killed for hanging on its way out)."""
    import signal

    if getattr(run, "timed_out", False):  # our own kill at --timeout: a failure, said so
        return False
    return not getattr(run, "reported", True) and getattr(run, "exitcode", None) == -signal.SIGKILL


# The child's own numbers (bench.isolation's stats) that are ProbeRecord columns; any
# other entry (a traceback) goes in the row's ``extra``.
_STAT_COLUMNS = ("child_rss_hwm_bytes", "child_max_allocated_bytes", "child_max_reserved_bytes")
_PEAK_COLUMNS = (
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "nvml_peak_used_bytes",
    "nvml_process_peak_bytes",
    "cpu_peak_rss_bytes",
)


def probe_row(run, config, *, key: str, kind: str, capacity: int, device: str, steps: int) -> dict:
    """One probes.parquet row (bench.records.ProbeRecord) from an IsolatedRun."""
    import datetime as dt

    trial = run.result.trial
    cap = run.cap
    stats = dict(run.stats or {})
    outcome, error = trial.get("status"), trial.get("error")
    done = trial.get("optimizer_steps")
    if outcome == "ok" and done is not None and done < steps:
        # It ended early without an error (time limit, early stop): it did not show
        # that b completes N steps, so it cannot count as a fit.
        outcome, error = "failed", f"completed {done} of {steps} optimizer steps"
    return records.probe_row(
        probe_key=key,
        kind=kind,
        trial_key=config.trial_key,
        workload=config.workload,
        precision=config.precision,
        device=device,
        micro_batch_size=config.batch_size,
        accumulation_steps=config.accumulation_steps,
        steps=steps,
        capacity_bytes=capacity,
        cap_method=None if cap is None else cap.method,
        cap_limit_bytes=None if cap is None else cap.limit_bytes,
        baseline_bytes=None if cap is None else cap.baseline_bytes,
        outcome=outcome,
        error=error,
        optimizer_steps=done,
        samples_per_s=trial.get("samples_per_s"),
        tokens_per_s=trial.get("tokens_per_s"),
        wall_s=run.wall_s,
        # The parent's clock: a probe killed before it reported has a start time too.
        started_at=records.now() - dt.timedelta(seconds=run.wall_s),
        config_json=json.dumps(config.to_dict(), sort_keys=True, default=str),
        **{col: _whole_bytes(trial.get(col)) for col in _PEAK_COLUMNS},
        **{col: stats.pop(col, None) for col in _STAT_COLUMNS},
        extra=records.extra_json(stats),
    )


def _whole_bytes(value) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


# -- the search --------------------------------------------------------------------------


@dataclass
class Boundary:
    """Result of one search: ``boundary`` fits, ``first_oom`` does not (None: never hit)."""

    boundary: int  # largest b proven to fit (0: not even the smallest tried)
    first_oom: int | None  # smallest b proven not to fit
    limited_by: str | None  # "max-batch" / "dataset" when the search hit the upper limit
    probes: int
    new_probes: int
    wall_s: float


def search(
    fits: Callable[[int], bool],
    *,
    start: int = 1,
    first_step: int | None = None,
    upper: int,
    tolerance: int = 1,
) -> tuple[int, int | None]:
    """Largest b in [1, upper] with ``fits(b)``, assuming fits is monotone (true, then false).

    Gallops from ``start``: up by steps that double from ``first_step`` (default
    ``start``, which makes it plain doubling: 1, 2, 4, ...) until a probe fails or
    ``upper`` is reached; or, if ``start`` fails, down by doubling steps until one fits.
    Then bisects until the last fit and the first failure are ``tolerance`` apart.
    Returns (last fit or 0, first failure or None).
    """
    if upper < 1:
        raise ValueError("upper must be >= 1")
    start = max(1, min(start, upper))
    step = max(1, first_step if first_step is not None else start)
    lo, hi = 0, None
    if fits(start):
        lo = start
        while lo < upper:
            b = min(lo + step, upper)
            if fits(b):
                lo = b
                step *= 2
            else:
                hi = b
                break
    else:
        hi = start
        while hi > 1:
            b = max(1, hi - step)
            if fits(b):
                lo = b
                break
            hi = b
            step *= 2
    if hi is None:
        return lo, None
    while hi - lo > max(1, tolerance):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def find_boundary(
    prober: Prober,
    *,
    start: int,
    upper: int,
    tolerance: int,
    first_step: int | None = None,
    on_probe=None,
) -> Boundary:
    before_probes, before_new = prober.probes, prober.new_probes
    t0 = time.perf_counter()

    def fits(b: int) -> bool:
        row = prober.run(b)
        if on_probe is not None:
            on_probe(row)
        if row["outcome"] == "ok":
            return True
        if row["outcome"] == "oom":
            return False
        raise ProbeFailed(row)

    lo, hi = search(fits, start=start, first_step=first_step, upper=upper, tolerance=tolerance)
    return Boundary(
        boundary=lo,
        first_oom=hi,
        limited_by=None,
        probes=prober.probes - before_probes,
        new_probes=prober.new_probes - before_new,
        wall_s=time.perf_counter() - t0,
    )


# -- the planner ---------------------------------------------------------------------------


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def peak_bytes(row: dict) -> int | None:
    """The probe's peak memory on the measure the capacity is about.

    CUDA: context (outside the allocator) + the allocator's peak reserved bytes.
    CPU: the probe process's peak RSS (meters' sampler, else the kernel's VmHWM)."""
    if row is None:
        return None
    if str(row.get("device", "")).startswith("cuda"):
        reserved = row.get("peak_reserved_bytes") or row.get("child_max_reserved_bytes")
        if reserved is None:
            return row.get("nvml_process_peak_bytes")
        return int(reserved) + int(row.get("baseline_bytes") or 0)
    values = [
        v for v in (row.get("cpu_peak_rss_bytes"), row.get("child_rss_hwm_bytes")) if v is not None
    ]
    return max(values) if values else None


# -- the command ---------------------------------------------------------------------------


@dataclass
class CapacityResult:
    capacity_bytes: int
    capped: bool
    boundary: Boundary
    margin_pct: float
    margin_capacity_bytes: int | None = None
    safe: Boundary | None = None  # the search under capacity x (1 - margin)
    peak_at_boundary_bytes: int | None = None
    plan: dict | None = None

    @property
    def safe_batch(self) -> int:
        return self.boundary.boundary if self.safe is None else self.safe.boundary

    def to_dict(self) -> dict:
        d = {
            "capacity_bytes": self.capacity_bytes,
            "capped": self.capped,
            "boundary": self.boundary.boundary,
            "first_oom": self.boundary.first_oom,
            "limited_by": self.boundary.limited_by,
            "margin_pct": self.margin_pct,
            "margin_capacity_bytes": self.margin_capacity_bytes,
            "boundary_after_margin": self.safe_batch,
            "peak_at_boundary_bytes": self.peak_at_boundary_bytes,
            "probes": self.boundary.probes,
            "new_probes": self.boundary.new_probes,
            "search_wall_s": round(self.boundary.wall_s, 3),
            "probe_bound": probe_bound(self.boundary.boundary),
        }
        if self.safe is not None:
            d["margin_search"] = asdict(self.safe)
        if self.plan is not None:
            d["plan"] = self.plan
        return d


def probe_bound(boundary: int) -> int | None:
    """2*log2(b) + 2, the probe budget of an exact search from start 1."""
    return None if boundary < 1 else int(math.floor(2 * math.log2(boundary) + 2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("what is probed")
    w.add_argument("--workload", help="workload name (or module:function)")
    w.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="workload option (repeatable)",
    )
    w.add_argument(
        "--config",
        metavar="TOML",
        help="a trial config to start from (its batch settings are ignored)",
    )
    w.add_argument(
        "--precision", help="fp32 / bf16 / fp16 / fp64 (default: the config's, else fp32)"
    )
    w.add_argument(
        "--optimizer", help="sgd / adamw (default adamw: its state is part of the memory)"
    )
    w.add_argument(
        "--samples", type=int, metavar="N", help="training-set size (the search stops there)"
    )
    w.add_argument("--device", help="auto / cpu / cuda / cuda:N (default auto)")
    w.add_argument(
        "--steps", type=int, default=3, metavar="N", help="optimizer steps per probe (default 3)"
    )
    w.add_argument("--no-eval", action="store_true", help="probe without the evaluation pass")
    s = p.add_argument_group("search")
    s.add_argument(
        "--capacity",
        action="append",
        default=[],
        metavar="SIZE",
        help="memory capacity, e.g. 16GiB (repeatable; default: the device's own)",
    )
    s.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN_PCT,
        metavar="PCT",
        help=f"safety margin, %% of capacity, in [0, 50) (default {DEFAULT_MARGIN_PCT:g})",
    )
    s.add_argument("--max-batch", type=int, metavar="B", help="largest b to try")
    s.add_argument(
        "--start",
        type=int,
        default=1,
        metavar="B",
        help="first b tried; doubling starts here (default 1)",
    )
    s.add_argument(
        "--tolerance",
        type=int,
        default=1,
        metavar="T",
        help="stop bisecting when fit and OOM are T apart (default 1: exact)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds per probe before it is killed (a failure)",
    )
    t = p.add_argument_group("planner")
    t.add_argument(
        "--target-batch",
        type=int,
        metavar="B",
        help="also recommend the fastest (b, k) with b*k = B",
    )
    t.add_argument(
        "--candidates",
        type=int,
        default=6,
        metavar="C",
        help="measure the C largest fitting divisors of B (default 6)",
    )
    t.add_argument(
        "--throughput-steps",
        type=int,
        default=6,
        metavar="S",
        help="timed optimizer steps per candidate, after 2 warm-up steps (default 6)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--results", default="results", metavar="DIR", help="results root (default results)"
    )
    o.add_argument(
        "--name", help="run name: probes go to DIR/oom/NAME/probes.parquet (default: the workload)"
    )
    o.add_argument("--json", action="store_true", help="print JSON instead of tables")
    o.add_argument(
        "--fresh",
        action="store_true",
        help="run every probe again, even those stored (they are kept; the new ones win)",
    )


def _base_config(args: argparse.Namespace):
    from bench.cli import config_from_args

    # AdamW by default: its optimizer state is part of the memory being measured.
    return config_from_args(
        args, defaults={"optimizer": "adamw"}, required=("workload",), where="oom"
    )


def _validate_args(args: argparse.Namespace) -> None:
    if not (0 <= args.margin < 50) or math.isnan(args.margin):
        raise BenchError(f"--margin must be a percentage in [0, 50), got {args.margin:g}")
    for flag, value, minimum in (
        ("--steps", args.steps, 1),
        ("--max-batch", args.max_batch, 1),
        ("--start", args.start, 1),
        ("--tolerance", args.tolerance, 1),
        ("--target-batch", args.target_batch, 1),
        ("--candidates", args.candidates, 1),
        ("--throughput-steps", args.throughput_steps, 1),
    ):
        if value is not None and value < minimum:
            raise BenchError(f"{flag} must be an integer >= {minimum}, got {value}")
    if args.timeout is not None and not args.timeout > 0:
        raise BenchError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")):
        raise BenchError(f"--name must be a plain folder name, got {args.name!r}")


def _dataset_size(config) -> tuple[int, str]:
    """Training-set size and resolved device, found in a child (so this process never
    imports torch or creates a CUDA context); any ConfigError surfaces here."""
    from bench.procs import inspect_config

    return inspect_config(config)


def main(args: argparse.Namespace, *, runner=None) -> int:
    from bench.config import format_bytes, parse_size
    from bench.meters import check_environment
    from bench.procs import measure_baseline

    t_start = time.perf_counter()
    _validate_args(args)
    check_environment()  # every probe child would fail on the same typo
    base = _base_config(args)
    spec = SearchSpec(base=base, steps=args.steps, evaluate=not args.no_eval)
    probe = spec.probe_config(1)  # validates the probe config (precision, options ...)
    capacities = [parse_size(c, key="--capacity") for c in args.capacity]

    n_train, device = _dataset_size(probe)
    info = measure_baseline(device)
    total, baseline = int(info["total_bytes"]), int(info["baseline_bytes"])
    spec = replace(spec, identity=probe_identity(info, base.workload))
    is_cuda = device.startswith("cuda")
    capped = bool(capacities)
    if not capacities:
        capacities = [total]
    for cap in capacities:
        if cap <= baseline:
            what = (
                "the CUDA context"
                if is_cuda
                else "an idle probe process with torch loaded (VmData)"
            )
            raise BenchError(
                f"--capacity {format_bytes(cap)} is at or below the baseline of {what}: {format_bytes(baseline)}"
            )
        if cap > total:
            raise BenchError(
                f"--capacity {format_bytes(cap)} is more than this {'device' if is_cuda else 'machine'} has ({format_bytes(total)}); a cap cannot emulate more memory"
            )
    if args.target_batch is not None and args.target_batch > n_train:
        raise BenchError(
            f"--target-batch {args.target_batch} exceeds the training set ({n_train} samples): "
            "no window of b*k samples fits in an epoch"
        )
    capacities = sorted(set(capacities))
    upper = n_train if args.max_batch is None else min(args.max_batch, n_train)
    limit_reason = "dataset" if args.max_batch is None or n_train <= args.max_batch else "max-batch"
    name = args.name or base.workload.replace(":", "-").replace("/", "-")
    store = ProbeStore(Path(args.results) / "oom" / name)
    try:  # before any probe: an unusable --results is bad input, not a late traceback
        store.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--results: cannot create {store.folder}: {exc.strerror or exc}"
        ) from None

    results: list[CapacityResult] = []
    error: str | None = None
    for cap in capacities:
        # The device's own memory needs no cap: the real limit applies (on CUDA the
        # context then sits inside it, as on any card).
        cap_arg = cap if capped else None
        prober = _prober(spec, cap_arg, device, store, runner, args)
        try:
            bound = find_boundary(prober, start=args.start, upper=upper, tolerance=args.tolerance)
            if bound.boundary == 0:
                raise BenchError(
                    f"--capacity {format_bytes(cap)}: workload {base.workload!r} runs out of memory even at b=1"
                )
            if bound.first_oom is None:
                bound.limited_by = limit_reason
            result = CapacityResult(cap, capped, bound, args.margin)
            result.peak_at_boundary_bytes = peak_bytes(_row_at(prober, bound.boundary))
            if args.margin > 0:
                result.margin_capacity_bytes = int(cap * (1 - args.margin / 100))
                result.safe = _margin_search(
                    spec, result, device, store, runner, args, baseline, upper
                )
        except ProbeFailed as exc:
            b = exc.row["micro_batch_size"]
            if b == 1:
                raise BenchError(
                    f"workload {base.workload!r} fails at b=1 ({exc.row['outcome']}): {exc.row['error']}"
                ) from None
            error = f"capacity {format_bytes(cap)}: probe at b={b} {exc.row['outcome']}: {exc.row['error']}"
            break
        results.append(result)

    if error is None and args.target_batch is not None:
        _plan(spec, results, device, store, runner, args)

    out = {
        "workload": base.workload,
        "workload_options": dict(_probe_options(base, True)),
        "precision": base.precision,
        "optimizer": base.optimizer,
        "device": device,
        "device_name": info.get("name"),
        "steps_per_probe": args.steps,
        "evaluation": not args.no_eval,
        "cap_method": ("cuda-memory-fraction" if is_cuda else "rlimit-data")
        if capped
        else "none (device's own memory)",
        "baseline_bytes": baseline,
        "total_bytes": total,
        "dataset_size": n_train,
        "tolerance": args.tolerance,
        "probes_path": str(store.path),
        "capacities": [r.to_dict() for r in results],
        "target_batch": args.target_batch,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "error": error,
    }
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(render(out))
    if error is not None:
        print(f"bench: search stopped: {error}", file=sys.stderr)
        return 1
    return 0


def _prober(spec, cap, device, store, runner, args, kind: str = "boundary") -> Prober:
    """A Prober with the command's settings (timeout, --fresh, progress at a terminal)."""
    return Prober(
        spec,
        cap,
        device,
        store,
        runner=runner,
        timeout_s=args.timeout,
        kind=kind,
        fresh=args.fresh,
        log=_progress if _progress_wanted() else None,
    )


def _row_at(prober: Prober, b: int) -> dict | None:
    for row in reversed(prober.rows):
        if row["micro_batch_size"] == b and row["outcome"] == "ok":
            return row
    return None


def _margin_search(
    spec, result: CapacityResult, device, store, runner, args, baseline, upper
) -> Boundary | None:
    """The largest b that fits in capacity x (1 - margin): gallop from the raw boundary
    scaled by (1 - margin), in steps of 1/32 of it, then bisect (see module docstring)."""
    cap = result.margin_capacity_bytes
    if cap is None or cap <= baseline:
        return Boundary(0, None, None, 0, 0, 0.0)
    prober = _prober(spec, cap, device, store, runner, args)
    b_raw = result.boundary.boundary
    estimate = max(1, int(b_raw * (1 - args.margin / 100)))
    bound = find_boundary(
        prober,
        start=estimate,
        first_step=max(args.tolerance, estimate // 32, 1),
        upper=min(upper, b_raw),
        tolerance=args.tolerance,
    )
    if bound.first_oom is None:
        bound.limited_by = "raw boundary"
    return bound


def _plan(spec: SearchSpec, results: list[CapacityResult], device, store, runner, args) -> None:
    """Throughput of (b, B / b) for the largest divisors b of B that fit, each measured
    once (under the tightest capacity it fits after the margin), best per capacity."""
    target = args.target_batch
    measured: dict[int, dict] = {}
    for result in results:  # ascending capacity: tightest first
        safe = result.safe_batch
        fitting = [d for d in divisors(target) if d <= safe][-args.candidates :]
        # Measured where the safe batch was verified: under capacity x (1 - margin), or
        # with no margin under the capacity itself (none for the device's own memory).
        if result.margin_capacity_bytes is not None:
            cap = result.margin_capacity_bytes
        else:
            cap = result.capacity_bytes if result.capped else None
        for b in fitting:
            if b in measured:
                continue
            prober = _prober(spec, cap, device, store, runner, args, kind="throughput")
            # No evaluation: its time is excluded from throughput anyway, and the
            # boundary probes already showed that b fits with it.
            row = prober.run(
                b, target // b, steps=2 + args.throughput_steps, timing_warmup=2, evaluate=False
            )
            measured[b] = row
        rows = [
            {
                "micro_batch_size": b,
                "accumulation_steps": target // b,
                "outcome": measured[b]["outcome"],
                "samples_per_s": measured[b]["samples_per_s"],
                "tokens_per_s": measured[b]["tokens_per_s"],
                "peak_bytes": peak_bytes(measured[b]),
                "error": measured[b]["error"],
            }
            for b in fitting
        ]
        ok = [r for r in rows if r["outcome"] == "ok" and r["samples_per_s"]]
        best = max(ok, key=lambda r: r["samples_per_s"]) if ok else None
        result.plan = {
            "target_batch": target,
            "candidates": rows,
            "recommended": None
            if best is None
            else {
                **best,
                "headroom_bytes": None
                if best["peak_bytes"] is None
                else result.capacity_bytes - best["peak_bytes"],
            },
            "note": "b divides B exactly (no short final micro-batch); candidates are the largest "
            f"{args.candidates} divisors of {target} at or below the boundary after the margin",
        }


# -- output ---------------------------------------------------------------------------------


def render(out: dict) -> str:
    from bench.config import format_bytes

    lines = []
    opts = ", ".join(f"{k}={v}" for k, v in sorted(out["workload_options"].items())) or "defaults"
    lines.append(
        f"oom boundary: {out['workload']} ({opts}), {out['precision']}, {out['optimizer']}, "
        f"{out['steps_per_probe']} optimizer steps{' + evaluation' if out['evaluation'] else ''} per probe, "
        f"on {out['device_name'] or out['device']}"
    )
    if out["device"].startswith("cuda"):
        lines.append(
            f"cap: {out['cap_method']}; CUDA context {format_bytes(out['baseline_bytes'])} measured, "
            "outside the allocator's fraction (subtracted from each capacity)"
        )
    else:
        lines.append(
            f"cap: {out['cap_method']}; idle probe process baseline {format_bytes(out['baseline_bytes'])} "
            "(VmData, inside the capacity); peak = the probe process's RSS"
        )
    header = (
        "capacity",
        "boundary",
        "first OOM",
        f"after {out['capacities'][0]['margin_pct']:g}% margin"
        if out["capacities"]
        else "after margin",
        "peak at boundary",
        "probes (new)",
        "bound",
        "search time",
    )
    table = []
    for c in out["capacities"]:
        boundary = str(c["boundary"]) + (f" (= {c['limited_by']} limit)" if c["limited_by"] else "")
        table.append(
            (
                format_bytes(c["capacity_bytes"]),
                boundary,
                "-" if c["first_oom"] is None else str(c["first_oom"]),
                str(c["boundary_after_margin"])
                if c["boundary_after_margin"]
                else "none (b=1 OOMs)",
                format_bytes(c["peak_at_boundary_bytes"]),
                f"{c['probes']} ({c['new_probes']})",
                "-" if c["probe_bound"] is None else str(c["probe_bound"]),
                f"{c['search_wall_s']:.1f} s",
            )
        )
    lines.extend(_table(header, table))
    if out["target_batch"] is not None and any(c.get("plan") for c in out["capacities"]):
        lines.append("")
        lines.append(
            f"planner: target batch {out['target_batch']} = b x k (b divides {out['target_batch']}; fastest measured)"
        )
        header = (
            "capacity",
            "boundary",
            "safe b",
            "b",
            "k",
            "samples/s",
            "peak memory",
            "headroom",
        )
        table = []
        for c in out["capacities"]:
            rec = (c.get("plan") or {}).get("recommended")
            if rec is None:
                table.append(
                    (
                        format_bytes(c["capacity_bytes"]),
                        str(c["boundary"]),
                        str(c["boundary_after_margin"]),
                        "-",
                        "-",
                        "no split fits",
                        "-",
                        "-",
                    )
                )
                continue
            table.append(
                (
                    format_bytes(c["capacity_bytes"]),
                    str(c["boundary"]),
                    str(c["boundary_after_margin"]),
                    str(rec["micro_batch_size"]),
                    str(rec["accumulation_steps"]),
                    f"{rec['samples_per_s']:.1f}",
                    format_bytes(rec["peak_bytes"]),
                    format_bytes(rec["headroom_bytes"]),
                )
            )
        lines.extend(_table(header, table))
    lines.append("")
    lines.append(f"probes: {out['probes_path']}   total time {out['wall_s']:.1f} s")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]
