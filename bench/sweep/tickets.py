"""Optuna ticket bookkeeping: which keys need a run, who claims one, which runs were lost.

How "every key exactly once" holds, with any number of coordinators on one or many
hosts (each ``python -m bench sweep SPEC`` is one coordinator with N workers):

1. **Tickets.** Each grid key (or each of a search's ``n_trials`` slots) is an Optuna
   trial enqueued as WAITING (``study.enqueue_trial``, user attrs ``bench_key`` /
   ``bench_slot`` and ``bench_attempt``). Tickets are created only by
   :meth:`Tickets.reconcile`, which runs under the sweep mutex
   (:mod:`bench.sweep.storage`) and reads the study first: a key gets a ticket only
   when it has neither a live ticket nor a result. So no key ever has two live tickets,
   however many coordinators start at once (Optuna's own ``GridSampler`` documents
   duplicates with parallel workers; ``enqueue_trial``'s ``skip_if_exists`` is a
   read-then-write race; both are avoided here).
2. **Claims.** A coordinator pops a ticket with ``study.ask()`` (WAITING -> RUNNING is
   atomic in both storages: a row lock in RDB, log order in the journal) and records
   itself as owner, both inside the mutex, so a RUNNING ticket always has an owner
   unless its coordinator died mid-claim.
3. **Lost trials.** A RUNNING ticket whose owner is dead (its liveness lock is free,
   which the kernel guarantees at the moment of death; on PostgreSQL its lease ran out
   and is revoked in the same step: ``Coordination.take_over``) is marked FAIL with
   ``bench_status = "lost"`` and its key gets a new ticket: keys that were running when
   a sweep was killed run again on resume. A lost ticket is not a result. Each claim
   carries its owner's lease (``Job.lease``), which the recorder checks before writing.
5. **Search proposals.** The sampler is seeded per proposal (:func:`proposal_seed`), so
   a resumed or second coordinator continues the sequence. A proposal that repeats a
   configuration that ran is recorded as ``repeat`` and its slot proposes again; it is
   a ``duplicate`` (the slot used up) only once the space is exhausted.
4. **Results** are written by :mod:`bench.sweep.recorder`: parquet first, then the
   study. Dying in between only makes the ticket lost: the key re-runs and its file is
   replaced.
5. **Interrupts.** A coordinator that stops on SIGINT or SIGTERM gives back the trials
   it holds (:meth:`Tickets.release`): each is failed with ``bench_status =
   "interrupted"`` (not a result) and its key gets a new ticket at once, for whichever
   coordinator runs next.

Every method that reads and then writes the study runs under the caller's
``coordination.mutex()``.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.errors import ConfigError
from bench.sweep.choices import display_value
from bench.sweep.spec import SweepSpec
from bench.sweep.trial_writer import TrialWriter

RESULT_STATUSES = ("ok", "oom", "diverged", "failed")
CONSUMED = RESULT_STATUSES + ("invalid", "duplicate")  # search slots that are used up
# A search proposal that repeats a configuration which already ran is recorded as
# "repeat" and its slot proposes again; only once the space is exhausted (or the sampler
# keeps repeating itself, see max_repeats) does a repeat use up the slot as "duplicate".
REPEAT = "repeat"
MAX_REPEATS = 100  # per slot, where the space is unbounded (float ranges without step)


@dataclass
class Job:
    """A claimed ticket: the Optuna trial, the config to run, and its run on a worker."""

    trial: Any  # optuna.trial.Trial
    config: Any  # TrialConfig
    key: str
    attempt: int
    started: float = 0.0  # time.monotonic() at dispatch
    deadline: float | None = None  # hard kill after this (time.monotonic())
    peak_rss: int | None = None  # the worker's VmHWM, polled while it runs
    lease: str = ""  # the coordinator registration that claimed it (the fencing token)


@dataclass
class Counts:
    total: int
    done: int = 0
    failed: int = 0  # done, status not ok
    running: int = 0
    waiting: int = 0
    statuses: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return self.done >= self.total


def proposal_seed(seed: int | None, proposal: int) -> int | None:
    """The sampler's seed for the ``proposal``-th ticket popped from a study: derived,
    so a resumed or second coordinator continues the sequence instead of replaying it."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"bench-proposal:{seed}:{proposal}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def sampler_for(spec: SweepSpec, proposal: int = 0) -> Any:
    import optuna

    s = spec.search
    if s is None:
        return optuna.samplers.RandomSampler(seed=0)  # every trial's params are fixed
    seed = proposal_seed(s.seed, proposal)
    # Constraints reach the samplers through trial.set_constraint (optuna 5.0
    # deprecates constraints_func); see Tickets.set_constraints.
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def space_size(spec: SweepSpec) -> int | None:
    """How many configurations a search can propose; None when a range is continuous."""
    size = len(spec.cases) * len(spec.seeds)
    for values in spec.axes.values():
        size *= len(values)
    for r in spec.search.ranges:
        if r.integer:
            size *= (int(r.high) - int(r.low)) // int(r.step or 1) + 1
        elif r.step:
            size *= int(round((r.high - r.low) / r.step)) + 1
        else:
            return None
    return size


def param_choices(spec: SweepSpec) -> dict[str, list[Any]]:
    """The study's categorical parameters and their choices: ``case`` (the cases'
    readable labels, :func:`bench.sweep.choices.case_labels`) when there are several, each
    grid axis, and ``seed`` when there are several."""
    choices: dict[str, list[Any]] = {}
    if len(spec.cases) > 1:
        choices["case"] = list(spec.case_labels)
    for axis, values in spec.axes.items():
        choices[axis] = [display_value(v) for v in values]
    if len(spec.seeds) > 1:
        choices["seed"] = list(spec.seeds)
    return choices


def ticket_ident(attrs: dict, *, search: bool) -> Any:
    """The key (grid) or slot (search) a trial's user attrs make it a ticket for; None
    for a trial that is not bench's."""
    return attrs.get("bench_slot") if search else attrs.get("bench_key")


def failed(trial: Any) -> bool:
    """A finished slot whose result is a failure: its own, or, for a duplicate, the
    failure it copied (so --retry-failed re-runs that too, and it then finds the retry)."""
    status = trial.user_attrs.get("bench_status")
    if status == "duplicate":
        return (trial.user_attrs.get("bench_row") or {}).get("status") == "failed"
    return status == "failed"


class Tickets:
    """The tickets of one sweep's study (in ``storage``, an Optuna storage), seen by one
    coordinator: ``coordination`` (bench.sweep.storage.Coordination) names this
    coordinator (``owner``) and says whether another one is alive."""

    def __init__(
        self,
        spec: SweepSpec,
        study: Any,
        storage: Any,
        coordination: Any,
        *,
        retry_failed: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.spec = spec
        self.study = study
        self.coordination = coordination
        self.retry_failed = retry_failed
        self.log = log
        self.writer = TrialWriter(storage)
        self._before_start = -1  # the highest Optuna trial number when this run began
        self._n_train_cache: dict = {}
        self._told_exhausted = False

    # -- reading ---------------------------------------------------------------------

    def _ident(self, trial: Any) -> Any:
        return ticket_ident(trial.user_attrs, search=self.spec.search is not None)

    def _groups(self) -> dict[Any, list[Any]]:
        groups: dict[Any, list[Any]] = defaultdict(list)
        for t in self.study.get_trials(deepcopy=False):
            ident = self._ident(t)
            if ident is not None:
                groups[ident].append(t)
        return groups

    def _expected(self) -> list[Any]:
        if self.spec.search:
            return list(range(self.spec.search.n_trials))
        return [p.key for p in self.spec.points]

    def counts(self) -> Counts:
        """Where every expected key stands: done (and how), running, waiting."""
        from optuna.trial import TrialState

        counts = Counts(total=self.spec.total)
        groups = self._groups()
        for ident in self._expected():
            group = groups.get(ident, [])
            live = [t for t in group if t.state in (TrialState.WAITING, TrialState.RUNNING)]
            counts.running += sum(t.state == TrialState.RUNNING for t in live)
            counts.waiting += sum(t.state == TrialState.WAITING for t in live)
            if live:
                continue
            finished = [t for t in group if t.user_attrs.get("bench_status") in CONSUMED]
            if finished:
                status = max(finished, key=lambda t: t.number).user_attrs["bench_status"]
                counts.done += 1
                counts.statuses[status] += 1
                counts.failed += status not in ("ok", "duplicate")
        return counts

    # -- reconcile -------------------------------------------------------------------

    def reconcile(self, *, startup: bool) -> Counts:
        """Under the mutex: fail lost trials, give a ticket to every key that needs one."""
        from optuna.trial import TrialState

        if startup:
            numbers = [t.number for t in self.study.get_trials(deepcopy=False)]
            self._before_start = max(numbers, default=-1)
        lost = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self._ident(t) is None:
                continue
            owner = t.system_attrs.get("bench_owner")
            if owner is None or self.coordination.take_over(owner):
                self._mark_lost(t, owner)
                lost += 1
        if lost:
            self.log(f"{self.spec.name}: {lost} trial(s) whose coordinator died will run again")
        groups = self._groups()
        # One journal append per ticket: Optuna's create_new_trial reads its own record
        # back (the new trial's id), so a batch, which defers the append, cannot hold it.
        for ident in self._expected():
            self._ticket_if_needed(ident, groups.get(ident, []), startup=startup)
        return self.counts()

    def _ticket_if_needed(self, ident: Any, group: list[Any], *, startup: bool) -> None:
        from optuna.trial import TrialState

        if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in group):
            return
        finished = [t for t in group if t.user_attrs.get("bench_status") in CONSUMED]
        latest = max(finished, key=lambda t: t.number) if finished else None
        retry = startup and self.retry_failed and latest is not None and failed(latest)
        if latest is not None and not retry:
            return
        attempt = 1 + max((t.user_attrs.get("bench_attempt", 0) for t in group), default=0)
        if self.spec.search:
            # A lost or retried slot keeps the configuration it had sampled; a slot whose
            # last proposal was a repeat proposes afresh.
            sampled = [t for t in group if t.user_attrs.get("bench_status") != REPEAT]
            previous = max(sampled, key=lambda t: t.number) if sampled else None
            params = dict(previous.params) if previous is not None else {}
            attrs = {"bench_slot": ident, "bench_attempt": attempt}
        else:
            params = dict(self.spec.points_by_key[ident].params)
            attrs = {"bench_key": ident, "bench_attempt": attempt}
        self.study.enqueue_trial(params, user_attrs=attrs)

    def _mark_lost(self, t: Any, owner: str | None) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self.writer.set_user_attr(t, "bench_status", "lost")
            self.writer.set_user_attr(
                t, "bench_error", f"coordinator {owner or '(unknown)'} died while this trial ran"
            )
            self.writer.fail(t)
        except UpdateFinishedTrialError:
            pass  # it finished after all

    def release(self, jobs: list[Job], why: str) -> int:
        """Under the mutex: give back claimed trials that have no result (this coordinator
        stops): each fails as "interrupted", and its key gets a new ticket. Returns how
        many were given back."""
        from optuna.exceptions import UpdateFinishedTrialError

        idents = []
        for job in jobs:
            try:
                self.writer.set_user_attr(job.trial, "bench_status", "interrupted")
                self.writer.set_user_attr(job.trial, "bench_error", why)
                self.writer.fail(job.trial)
            except UpdateFinishedTrialError:
                continue  # it has a result after all
            idents.append(self._ident(job.trial))
        groups = self._groups()
        for ident in idents:
            self._ticket_if_needed(ident, groups.get(ident, []), startup=False)
        return len(idents)

    # -- claims ----------------------------------------------------------------------

    def claim(self, n: int) -> list[Job]:
        """Under the mutex: pop up to n tickets and own them. Each job carries the
        coordinator's lease at the claim (``Job.lease``): its result is written only
        while that lease holds (see bench.sweep.recorder)."""
        from optuna.trial import TrialState

        waiting = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if self._ident(t) is not None
        ]
        lease = self.coordination.owner
        jobs: list[Job] = []
        tickets = min(n, len(waiting))
        while tickets > 0:
            tickets -= 1
            if self.spec.search:
                self._reseed()
            trial = self.study.ask()  # the claim itself, appended alone: ask() reads it back
            attrs = trial.user_attrs
            if not self.spec.search and ticket_ident(attrs, search=False) is not None:
                jobs.append(self._own_grid_ticket(trial, lease))
                continue
            self.writer.set_system_attr(trial, "bench_owner", lease)
            if ticket_ident(attrs, search=self.spec.search is not None) is None:
                # Not a ticket (someone else's ask() on this study): give it back as failed.
                self.writer.set_user_attr(trial, "bench_status", "stray")
                self.study.tell(trial, state=TrialState.FAIL)
                break
            job, again = self._sample(trial, int(attrs.get("bench_attempt", 1)))
            tickets += again  # a repeated proposal gave its slot a new ticket
            if job is not None:
                job.lease = lease
                jobs.append(job)
        return jobs

    def _own_grid_ticket(self, trial: Any, lease: str) -> Job:
        """A claimed grid ticket's owner and parameters in one journal append, made before
        the mutex is released. Killed before it, the trial is RUNNING with no owner, as
        when killed mid-claim: lost, run again on resume."""
        attrs = trial.user_attrs
        point = self.spec.points_by_key[attrs["bench_key"]]
        with self.writer.batched():
            self.writer.set_system_attr(trial, "bench_owner", lease)
            self._suggest_fixed(trial, point.params)
        return Job(trial, point.config, point.key, int(attrs.get("bench_attempt", 1)), lease=lease)

    def _reseed(self) -> None:
        """A sampler seeded for the next proposal: the n-th ticket popped from the study
        (under the mutex, so each proposal gets its own seed, whichever coordinator makes
        it, however often the sweep was resumed)."""
        from optuna.trial import TrialState

        popped = sum(t.state != TrialState.WAITING for t in self.study.get_trials(deepcopy=False))
        self.study.sampler = sampler_for(self.spec, popped)

    def set_constraints(self, trial: Any, row: dict) -> None:
        """The spec's constraints, evaluated on a result row, for the samplers.
        (Through trial.set_constraint: optuna 5.0 deprecates constraints_func.)"""
        for c in self.spec.constraints:
            trial.set_constraint(c.text, c.violation(row.get(c.column)))

    def _suggest_fixed(self, trial: Any, params: dict) -> None:
        # The full choice list, not [value]: RDB storage refuses a categorical parameter
        # whose choices differ between trials of one study.
        choices = param_choices(self.spec)
        for name in params:
            trial.suggest_categorical(name, choices[name])

    # -- search mode -----------------------------------------------------------------

    def _sample(self, trial: Any, attempt: int) -> tuple[Job | None, bool]:
        """Search mode: let the sampler choose, then make sure the key runs only once.
        (the job to run or None, whether the slot got a new ticket to propose again)."""
        from optuna.trial import TrialState

        from bench.sweep.spec import validate_point

        try:
            config = self._suggest(trial)
            validate_point(config, self._n_train_cache)
        except ConfigError as exc:
            self.writer.set_user_attr(trial, "bench_status", "invalid")
            self.writer.set_user_attr(trial, "bench_error", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            self.log(f"{self.spec.name}: trial {trial.number} sampled an invalid point: {exc}")
            return None, False
        key = config.trial_key
        self.writer.set_user_attr(trial, "bench_key", key)
        original = self._ran_before(trial, key)
        if original is None:
            return Job(trial, config, key, attempt), False
        # Same configuration already ran (or is running): record, do not rerun. The slot
        # proposes again unless the space has nothing new left.
        again = self._may_propose_again(trial)
        self.writer.set_user_attr(trial, "bench_status", REPEAT if again else "duplicate")
        self.writer.set_user_attr(trial, "bench_duplicate_of", original.number)
        if "bench_row" in original.user_attrs:
            self.writer.set_user_attr(trial, "bench_row", original.user_attrs["bench_row"])
            self.set_constraints(trial, original.user_attrs["bench_row"])
        if original.state == TrialState.COMPLETE:
            self.study.tell(trial, original.values)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        if again:
            slot = trial.user_attrs["bench_slot"]
            self.study.enqueue_trial({}, user_attrs={"bench_slot": slot, "bench_attempt": attempt})
        return None, again

    def _may_propose_again(self, trial: Any) -> bool:
        """Whether a slot whose proposal repeated a configuration proposes again: yes,
        unless every configuration of the space has run (or runs), or the sampler keeps
        repeating itself (max_repeats proposals for this slot)."""
        from optuna.trial import TrialState

        slot = trial.user_attrs.get("bench_slot")
        trials = self.study.get_trials(deepcopy=False)
        ran = {
            t.user_attrs.get("bench_key")
            for t in trials
            if t.number != trial.number
            and "bench_key" in t.user_attrs
            and (
                t.state == TrialState.RUNNING or t.user_attrs.get("bench_status") in RESULT_STATUSES
            )
        }
        size = space_size(self.spec)
        if size is not None and len(ran) >= size:
            if not self._told_exhausted:
                self._told_exhausted = True
                self.log(
                    f"{self.spec.name}: the search space is exhausted: all {size} configurations "
                    "have run; the remaining trials are recorded as duplicate"
                )
            return False
        repeats = sum(
            t.user_attrs.get("bench_slot") == slot and t.user_attrs.get("bench_status") == REPEAT
            for t in trials
        )
        if repeats >= (MAX_REPEATS if size is None else max(MAX_REPEATS, 10 * size)):
            self.log(
                f"{self.spec.name}: trial slot {slot}: the sampler proposed only configurations "
                f"that already ran ({repeats} times); recorded as duplicate"
            )
            return False
        return True

    def _suggest(self, trial: Any) -> Any:
        """The sampler's configuration for ``trial``, as a TrialConfig."""
        spec = self.spec
        choices = param_choices(spec)
        values: dict[str, Any] = {}
        case = 0
        if "case" in choices:
            case = choices["case"].index(trial.suggest_categorical("case", choices["case"]))
        for axis, raw in spec.axes.items():
            picked = trial.suggest_categorical(axis, choices[axis])
            values[axis] = raw[choices[axis].index(picked)]
        seed = (
            trial.suggest_categorical("seed", choices["seed"])
            if "seed" in choices
            else spec.seeds[0]
        )
        for r in spec.search.ranges:
            if r.integer:
                values[r.name] = trial.suggest_int(
                    r.name, int(r.low), int(r.high), step=int(r.step or 1), log=r.log
                )
            else:
                values[r.name] = trial.suggest_float(r.name, r.low, r.high, step=r.step, log=r.log)
        return spec.config_for(case, values, seed)

    def _ran_before(self, trial: Any, key: str) -> Any:
        """Another trial that ran (or runs) ``key`` and stands as its result, or None."""
        from optuna.trial import TrialState

        slot = trial.user_attrs.get("bench_slot")
        for other in self.study.get_trials(deepcopy=False):
            if other.number == trial.number or other.user_attrs.get("bench_key") != key:
                continue
            status = other.user_attrs.get("bench_status")
            if status == "failed" and (
                other.user_attrs.get("bench_slot") == slot
                or (self.retry_failed and other.number <= self._before_start)
            ):
                # A failure this sweep was asked to retry (--retry-failed: the ones
                # recorded before this run), or this slot's own earlier attempt, is not a
                # result: run the configuration again instead of copying the failure.
                continue
            if other.state == TrialState.RUNNING or status in RESULT_STATUSES:
                return other
        return None
