"""The sweep's Optuna study: opened or created, checked against the spec that made it,
and dropped again when a run that created it could not start."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.sweep.spec import DEFAULT_OBJECTIVE, Objective, SweepSpec, hash_with_objectives
from bench.sweep.storage import StorageHandle
from bench.sweep.tickets import param_choices, sampler_for, ticket_ident


def open_study(spec: SweepSpec, handle: StorageHandle, folder: Path) -> tuple[Any, bool]:
    """(the study, whether this call created it). Under the sweep mutex. Raises
    BenchError for a study of the same name that another spec (or not bench) made."""
    import optuna

    created = False
    try:
        study = optuna.load_study(
            study_name=spec.name, storage=handle.storage, sampler=sampler_for(spec)
        )
    except KeyError:
        created = True
        study = optuna.create_study(
            study_name=spec.name,
            storage=handle.storage,
            sampler=sampler_for(spec),
            directions=spec.directions,
        )
    attrs = study.user_attrs
    found = attrs.get("bench_spec_hash")
    if found is None:
        _claim_study(spec, study, handle)
    elif found != spec.spec_hash:
        raise BenchError(_refusal(spec, attrs, handle, folder))
    _check_choices(spec, study, handle, folder)
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise BenchError(
            f"study {spec.name!r} has directions {study.directions}, the spec wants {spec.directions}"
        )
    return study, created


def _refusal(spec: SweepSpec, attrs: dict, handle: StorageHandle, folder: Path) -> str:
    """Why a study of this name cannot take this spec's results, and what to do. A study
    whose trials match but whose objective differs (a grid spec naming none gets
    tail_loss) would mix two losses in one value column: said as such."""
    then = f"give the changed spec a new name, or {_start_over(spec, handle, folder)}"
    old = [Objective(c, d) for c, d in attrs.get("bench_objectives") or []]
    if (
        old
        and old != list(spec.objectives)
        and hash_with_objectives(spec, old) == attrs.get("bench_spec_hash")
    ):
        default = " (a grid sweep's default)" if spec.objectives == (DEFAULT_OBJECTIVE,) else ""
        return (
            f"sweep {spec.name!r} in {handle.description} ranks its trials by "
            f"{_objectives_text(old)}, this spec by {_objectives_text(spec.objectives)}{default}; "
            f"refusing to mix the two in one study: {then}"
        )
    return (
        f"sweep {spec.name!r} in {handle.description} was started from a different spec "
        f"(spec hash {attrs.get('bench_spec_hash')} there, {spec.spec_hash} now; first from "
        f"{attrs.get('bench_spec_file')}); refusing to mix them: {then}"
    )


def _check_choices(spec: SweepSpec, study: Any, handle: StorageHandle, folder: Path) -> None:
    """Refuse a study whose trials chose a categorical parameter from other choices than
    this spec offers (a study whose ``case`` choices are indices 0..n-1, not the cases'
    labels): Optuna would refuse the first new trial of it, mid-sweep."""
    wanted = param_choices(spec)
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            found = list(getattr(dist, "choices", ()))
            if name in wanted and found != wanted[name]:
                raise BenchError(
                    f"study {spec.name!r} in {handle.description} chose {name!r} from "
                    f"{_few(found)}, this spec offers {_few(wanted[name])}; refusing to mix "
                    f"them: give the spec a new name, or {_start_over(spec, handle, folder)}"
                )
        if t.distributions:  # one trial with parameters shows the study's choices
            return


def _few(choices: list[Any]) -> str:
    shown = ", ".join(repr(c)[:40] for c in choices[:3])
    return f"[{shown}{', ...' if len(choices) > 3 else ''}]"


def _objectives_text(objectives: Any) -> str:
    return ", ".join(f"{o.column} ({o.direction})" for o in objectives)


def _start_over(spec: SweepSpec, handle: StorageHandle, folder: Path) -> str:
    """How to drop the old study: its folder holds a journal; a PostgreSQL study lives in
    the database, so deleting a folder would not remove it."""
    if handle.kind == "postgresql":
        return (
            f"delete the study to start over: optuna delete-study --study-name {spec.name} "
            f"--storage {handle.description}"
        )
    return f"delete {folder} to start over"


def _claim_study(spec: SweepSpec, study: Any, handle: StorageHandle) -> None:
    """Mark a study without bench's attributes as this spec's, unless it has trials that
    are not bench's."""
    search = spec.search is not None
    if any(
        ticket_ident(t.user_attrs, search=search) is None for t in study.get_trials(deepcopy=False)
    ):
        raise BenchError(
            f"study {spec.name!r} in {handle.description} exists and was not made by "
            "bench sweep; choose another sweep name"
        )
    study.set_user_attr("bench_spec_hash", spec.spec_hash)
    study.set_user_attr("bench_question", spec.question)
    study.set_user_attr("bench_spec_file", str(spec.path))
    study.set_user_attr("bench_total", spec.total)
    study.set_user_attr("bench_objectives", [[o.column, o.direction] for o in spec.objectives])
    import optuna

    with warnings.catch_warnings():  # experimental in Optuna 4-5; the dashboard reads it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.column for o in spec.objectives])


def discard_if_unused(
    spec: SweepSpec, study: Any, handle: StorageHandle, folder: Path, log: Callable[[str], None]
) -> bool:
    """Delete a study that a run created and that failed before anything ran (a worker
    could not start: a memory cap below its baseline, say). Kept, its spec hash would
    refuse the corrected spec under the same name. Only where no other coordinator is
    alive on it (known for the file-locked journal; with PostgreSQL there is no list of
    coordinators, so the study stays). The folder stays: its worker logs say why the
    start failed, and its lock file is the sweep's mutex, which a coordinator starting
    now may already hold. The caller checks that this run created the study and ran
    nothing."""
    import optuna
    from optuna.trial import TrialState

    coord = handle.coordination
    with coord.mutex():
        if coord.others_alive():
            return False
        trials = study.get_trials(deepcopy=False)
        if any(t.state != TrialState.WAITING for t in trials):
            return False
        if any((folder / "trials").glob("*.parquet")):
            return False
        optuna.delete_study(study_name=spec.name, storage=handle.storage)
    log(
        f"{spec.name}: nothing ran; its study was dropped, so a corrected spec can start under the same name"
    )
    return True
