"""Running probes: one trial configuration at (b, k) in a fresh, capped child process
(bench.procs.run_isolated), its outcome stored as a probes.parquet row, or a stored
row reused when one answers the same question.

A probe killed by SIGKILL under a cap ran into outside pressure, not the cap (the cap
makes allocations fail inside the probe): it runs once more before it may count as an
OOM, and a probe killed twice is never reused.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import records
from bench.oom.probe_spec import SearchSpec, probe_key, search_key
from bench.oom.probe_store import ProbeStore


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
    ladder_runner: Callable[..., Any] | None = None  # run_ladder-like; injectable for tests
    timeout_s: float | None = None
    kind: str = "boundary"
    fresh: bool = False  # run every probe, even one stored (--fresh)
    log: Callable[[str], None] | None = None  # one line per new probe (stderr in main)
    probes: int = 0  # distinct probes asked for (new + reused)
    new_probes: int = 0
    ladders: int = 0  # ladder processes run (each many batch sizes; not in probes)
    rows: list[dict] = field(default_factory=list)
    phase: str | None = None  # recorded on new rows: "search", "confirm", "margin", ...
    margin_pct: float | None = None  # recorded on new rows: the margin this cap applies
    _since: int = field(default=0, init=False)  # --fresh: only rows added since answer
    # This run's own answers, killed ones included: a search asks a b again (the
    # confirmation re-reads the search's run) and must get the same row back.
    _seen: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.fresh:
            self._since = len(self.store.rows)

    @property
    def capacity_key(self) -> int:
        """The capacity as stored in probe keys and rows: 0 for no cap."""
        return self.capacity_bytes if self.capacity_bytes is not None else 0

    def run(
        self,
        b: int,  # the searched value: the micro-batch, or the stack size (spec.stack_batch)
        k: int = 1,
        *,
        steps: int | None = None,
        timing_warmup: int | None = None,
        evaluate: bool | None = None,
        repeat: int = 0,
    ) -> dict:
        """The probe row at (b, k), run number ``repeat`` (0: the first): stored if one
        answers, else measured and stored. A stack search's probe (``spec.stack_batch``)
        trains ``b`` members at that micro-batch."""
        b, stack = self.spec.searched(b)
        config = self.spec.probe_config(
            b, k, steps=steps, timing_warmup=timing_warmup, evaluate=evaluate
        )
        key = probe_key(
            config, self.capacity_key, self.device, self.kind, self.spec.identity, stack
        )
        if (key, repeat) in self._seen:  # asked before in this run: not another probe
            return self._seen[key, repeat]
        self.probes += 1
        found = self.store.find(key, repeat, since=self._since)
        if found is not None:
            self._seen[key, repeat] = found
            self.rows.append(found)
            return found
        run, killed = self._execute(config, stack)
        phase = self.phase if repeat == 0 else "confirm"
        row = self._row(run, config, key, self.kind, killed=killed, repeat=repeat, phase=phase)
        row["stack_size"] = stack
        row["margin_pct"] = self.margin_pct
        self.new_probes += 1
        self._seen[key, repeat] = row
        self.store.add(row)
        self.rows.append(row)
        self._log(row, run.wall_s)
        return row

    def ladder(self, sizes: list[int]) -> list[dict]:
        """Rows of one ladder (bench.procs.run_ladder): ``sizes`` ascending, run one after
        another in one process until one does not fit. The memory model's points, stored
        with kind "ladder" and never read as boundary evidence (a ladder's job runs after
        others in its process). A stored ladder answers whole or not at all."""
        configs = [self.spec.probe_config(b) for b in sizes]
        keys = [
            probe_key(c, self.capacity_key, self.device, "ladder", self.spec.identity)
            for c in configs
        ]
        stored = self._stored_ladder(keys)
        if stored is not None:
            return stored
        runner = self.ladder_runner
        if runner is None:
            from bench.procs import run_ladder as runner
        runs = runner(configs, cap_bytes=self.capacity_bytes, timeout_s=self.timeout_s)
        rows = []
        for run, config, key in zip(runs, configs, keys, strict=False):  # it may stop early
            killed = killed_by_sigkill(run)
            row = self._row(run, config, key, "ladder", killed=killed, repeat=0, phase="ladder")
            self.store.add(row)
            rows.append(row)
            self._log(row, run.wall_s)
        self.ladders += 1
        return rows

    def _row(self, run, config, key: str, kind: str, *, killed: bool, repeat: int, phase: str):
        """A new probe row: what the run measured and where it belongs."""
        row = probe_row(
            run, config, key=key, kind=kind, capacity=self.capacity_key, device=self.device,
            steps=config.max_steps,
        )  # fmt: skip
        row["search_key"] = search_key(self.spec, self.capacity_key, self.device)
        row["identity_json"] = self.spec.identity or None
        # Only under a cap is a kill outside pressure (not an answer to keep); without one
        # it is the machine's own memory running out: an OOM like any other, reused.
        row["killed"] = killed and self.capacity_bytes is not None
        row["repeat"], row["phase"] = repeat, phase
        return row

    def _stored_ladder(self, keys: list[str]) -> list[dict] | None:
        """The stored rows of a whole ladder (up to its first non-fit), or None."""
        if self.fresh:
            return None
        rows = []
        for key in keys:
            row = self.store.find(key)
            if row is None:
                return None
            rows.append(row)
            if row["outcome"] != "ok":
                break
        return rows

    def _execute(self, config, stack: int | None = None) -> tuple[Any, bool]:
        """Run the probe process: (the run, whether it died by SIGKILL)."""
        runner = self.runner
        if runner is None:
            from bench.procs import run_isolated

            runner = run_isolated
        if stack is not None:  # the runner trains a stack of that many members
            runner = functools.partial(runner, stack_size=stack)
        run = runner(config, cap_bytes=self.capacity_bytes, timeout_s=self.timeout_s)
        killed = killed_by_sigkill(run)
        if self.capacity_bytes is None or not killed:
            return run, killed
        # Under a cap, running past it is an allocation error inside the probe (ENOMEM
        # under RLIMIT_DATA, OutOfMemoryError under the CUDA fraction), never a kill.
        # A SIGKILL came from outside: the machine's OOM killer while other work fills
        # its memory, or a person. It would pass for a small boundary, so the probe runs
        # once more; killed twice, it stays an OOM and says so.
        first_error = run.result.trial.get("error") or "killed by SIGKILL"
        run = runner(config, cap_bytes=self.capacity_bytes, timeout_s=self.timeout_s)
        trial = run.result.trial
        killed = killed_by_sigkill(run)
        if killed:
            trial["error"] = (trial.get("error") or "") + "; killed again when re-run"
        else:  # the kill is kept on record: it is the evidence of outside pressure
            trial["error"] = "; ".join(
                filter(None, [trial.get("error"), f"re-run after a first run: {first_error}"])
            )
        return run, killed

    def _log(self, row: dict, wall_s: float) -> None:
        if self.log is None:  # progress: a search of many probes can take minutes
            return
        from bench.config import format_bytes

        cap = "no cap" if self.capacity_bytes is None else format_bytes(self.capacity_bytes)
        stack = "" if row.get("stack_size") is None else f"S={row['stack_size']} "
        self.log(
            f"oom: {row['kind']} probe {stack}b={row['micro_batch_size']} "
            f"k={row['accumulation_steps']} under {cap}: {row['outcome']} ({wall_s:.1f} s)"
        )


def killed_by_sigkill(run) -> bool:
    """True when the probe process died by SIGKILL before reporting (not one that
    reported and was then killed for hanging on its way out)."""
    if getattr(run, "timed_out", False):  # our own kill at --timeout: a failure, said so
        return False
    return not getattr(run, "reported", True) and getattr(run, "exitcode", None) == -signal.SIGKILL


# The child's own numbers (bench.procs' stats) that are ProbeRecord columns; any other
# entry (a traceback) goes in the row's ``extra``.
_STAT_COLUMNS = (
    "child_rss_hwm_bytes",
    "child_max_allocated_bytes",
    "child_max_reserved_bytes",
    "vmdata_peak_bytes",
)
_PEAK_COLUMNS = (
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "nvml_peak_used_bytes",
    "nvml_process_peak_bytes",
    "cpu_peak_rss_bytes",
)


def probe_row(run, config, *, key: str, kind: str, capacity: int, device: str, steps: int) -> dict:
    """One probes.parquet row (bench.records.ProbeRecord) from an IsolatedRun."""
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


def searched_value(row: dict) -> int:
    """The value a probe row answers for: its stack size in a stack search, else b."""
    return row["micro_batch_size"] if row.get("stack_size") is None else row["stack_size"]


def peak_bytes(row: dict | None) -> int | None:
    """The probe's peak memory on the measure the capacity is about.

    CUDA: context (outside the allocator) + the allocator's peak reserved bytes.
    CPU under a cap: the sampled peak of VmData, the quantity RLIMIT_DATA limits.
    CPU without one: the probe process's peak RSS (meters' sampler, else VmHWM)."""
    if row is None:
        return None
    if str(row.get("device", "")).startswith("cuda"):
        reserved = row.get("peak_reserved_bytes") or row.get("child_max_reserved_bytes")
        if reserved is None:
            return row.get("nvml_process_peak_bytes")
        return int(reserved) + int(row.get("baseline_bytes") or 0)
    if row.get("vmdata_peak_bytes") is not None:
        return int(row["vmdata_peak_bytes"])
    values = [
        v for v in (row.get("cpu_peak_rss_bytes"), row.get("child_rss_hwm_bytes")) if v is not None
    ]
    return max(values) if values else None
