"""bench.sweep.tickets against Optuna's in-memory storage: one ticket per key, claims
owned by their coordinator, lost trials of a dead coordinator re-queued, results and
--retry-failed counted."""

from __future__ import annotations

from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from bench.sweep.spec import load_spec  # noqa: E402
from bench.sweep.tickets import Tickets  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"


class Coordination:
    """Who this coordinator is, and which other coordinators are alive."""

    def __init__(self, owner: str, alive: set[str] | None = None) -> None:
        self.owner = owner
        self.alive = alive if alive is not None else set()

    def is_alive(self, owner: str) -> bool:
        return owner == self.owner or owner in self.alive

    def take_over(self, owner: str) -> bool:
        return not self.is_alive(owner)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tickets.toml"
    path.write_text("""\
# Test sweep: ticket bookkeeping
name = "tickets"
device = "cpu"
[workload]
name = "seed-mlp"
[base]
samples = 64
batch_size = 16
[grid]
lr = [0.1, 0.2, 0.3]
""")
    return load_spec(path)


@pytest.fixture
def storage():
    return optuna.storages.InMemoryStorage()


@pytest.fixture
def study(spec, storage):
    return optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions)


def tickets_for(spec, study, storage, owner: str, **kw) -> tuple[Tickets, list[str]]:
    lines: list[str] = []
    coord = kw.pop("coordination", None) or Coordination(owner)
    return Tickets(spec, study, storage, coord, log=lines.append, **kw), lines


def test_each_key_gets_one_ticket_and_a_claim_owns_it(spec, study, storage):
    tickets, _ = tickets_for(spec, study, storage, "me")
    counts = tickets.reconcile(startup=True)
    assert (counts.total, counts.waiting, counts.running, counts.done) == (3, 3, 0, 0)
    assert tickets.reconcile(startup=False).waiting == 3  # a live ticket is not doubled
    assert len(study.get_trials()) == 3

    jobs = tickets.claim(2)
    assert len(jobs) == 2 and len({j.key for j in jobs}) == 2
    assert {j.key for j in jobs} <= set(spec.points_by_key)
    assert all(j.attempt == 1 for j in jobs)
    for job in jobs:
        frozen = study.get_trials()[job.trial.number]
        assert frozen.state == TrialState.RUNNING
        assert frozen.system_attrs["bench_owner"] == "me"
        assert frozen.user_attrs["bench_key"] == job.key == job.config.trial_key
        assert frozen.params["lr"] == job.config.lr
    counts = tickets.counts()
    assert (counts.running, counts.waiting) == (2, 1)
    assert len(tickets.claim(5)) == 1  # only what is waiting
    assert tickets.claim(5) == []


def test_a_dead_coordinators_trial_is_lost_and_its_key_queued_again(spec, study, storage):
    other, _ = tickets_for(spec, study, storage, "other")
    other.reconcile(startup=True)
    (job,) = other.claim(1)

    # While "other" is alive, its running trial is its own business.
    alive, _ = tickets_for(spec, study, storage, "me", coordination=Coordination("me", {"other"}))
    counts = alive.reconcile(startup=True)
    assert (counts.running, counts.waiting) == (1, 2)

    # "other" died: its trial is lost, not a result, and its key gets a second ticket.
    mine, lines = tickets_for(spec, study, storage, "me")
    counts = mine.reconcile(startup=True)
    assert (counts.running, counts.waiting, counts.done) == (0, 3, 0)
    assert "1 trial(s) whose coordinator died will run again" in lines[0]
    lost = study.get_trials()[job.trial.number]
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["bench_status"] == "lost"
    assert "coordinator other died" in lost.user_attrs["bench_error"]
    retry = [
        t
        for t in study.get_trials(states=(TrialState.WAITING,))
        if t.user_attrs["bench_key"] == job.key
    ]
    assert len(retry) == 1 and retry[0].user_attrs["bench_attempt"] == 2
    assert [j.attempt for j in mine.claim(3) if j.key == job.key] == [2]


def test_a_result_is_done_and_only_retry_failed_queues_a_failure_again(spec, study, storage):
    tickets, _ = tickets_for(spec, study, storage, "me")
    tickets.reconcile(startup=True)
    (job,) = tickets.claim(1)
    tickets.writer.set_user_attr(job.trial, "bench_status", "failed")
    study.tell(job.trial, state=TrialState.FAIL)

    counts = tickets.counts()
    assert (counts.done, counts.failed, dict(counts.statuses)) == (1, 1, {"failed": 1})
    assert tickets.reconcile(startup=True).waiting == 2  # a failure is a result

    retrying, _ = tickets_for(spec, study, storage, "me", retry_failed=True)
    counts = retrying.reconcile(startup=True)
    assert (counts.waiting, counts.done) == (3, 0)
    assert retrying.reconcile(startup=False).waiting == 3  # once, at startup
    again = [j for j in retrying.claim(3) if j.key == job.key]
    assert len(again) == 1 and again[0].attempt == 2


def test_optunas_private_trial_id_is_read_in_one_place():
    users = sorted(
        str(p.relative_to(BENCH)) for p in BENCH.rglob("*.py") if "._trial_id" in p.read_text()
    )
    assert users == ["sweep/trial_writer.py"]
