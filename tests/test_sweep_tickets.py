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


CASES = """\
# Test sweep: cases as Optuna choices
name = "cases"
device = "cpu"
seeds = [0, 1]
[workload]
name = "seed-mlp"
[base]
samples = 64
[[cases]]
batch_size = 16
accumulation_steps = 1
[[cases]]
batch_size = 8
accumulation_steps = 2
[[cases]]
batch_size = 4
"workload_options.val_samples" = 8
[[cases]]
"""


def cases_spec(tmp_path, extra: str = ""):
    path = tmp_path / "cases.toml"
    path.write_text(CASES + extra)
    return load_spec(path)


def test_case_choices_are_the_cases_settings_and_map_back_exactly(tmp_path, storage):
    spec = cases_spec(tmp_path)
    labels = spec.case_labels
    assert labels == (
        "batch_size=16 accumulation_steps=1",
        "batch_size=8 accumulation_steps=2",
        "batch_size=4 workload_options.val_samples=8",
        "(base)",
    )
    assert cases_spec(tmp_path / "..").case_labels == labels  # the spec alone decides
    # Grid mode: each point's case parameter is its case's label, and the label's index
    # rebuilds the point's configuration exactly.
    for point in spec.points:
        case = labels.index(point.params["case"])
        rebuilt = spec.config_for(case, {}, point.config.seed)
        assert rebuilt.trial_key == point.key
    study = optuna.create_study(study_name="cases", storage=storage, directions=spec.directions)
    tickets, _ = tickets_for(spec, study, storage, "me")
    tickets.reconcile(startup=True)
    jobs = tickets.claim(len(spec.points))
    assert len(jobs) == len(spec.points) == 8
    for job in jobs:
        params = study.get_trials()[job.trial.number].params
        assert params["case"] in labels and params["seed"] in (0, 1)
        rebuilt = spec.config_for(labels.index(params["case"]), {}, params["seed"])
        assert rebuilt.trial_key == job.key


def test_search_mode_samples_case_labels_and_builds_that_case(tmp_path, storage):
    search = '[search]\nsampler = "random"\nn_trials = 6\nseed = 1\nminimize = "tail_loss"\n'
    spec = cases_spec(tmp_path, search)
    study = optuna.create_study(study_name="cases", storage=storage, directions=spec.directions)
    tickets, _ = tickets_for(spec, study, storage, "me")
    tickets.reconcile(startup=True)
    jobs = tickets.claim(6)
    assert jobs
    for job in jobs:
        params = study.get_trials()[job.trial.number].params
        case = spec.case_labels.index(params["case"])
        assert job.config == spec.config_for(case, {}, params["seed"])
        assert job.config.batch_size == (16, 8, 4, 1)[case] or case == 3


def test_case_labels_unique_short_and_tagged_only_where_needed():
    from bench.sweep.choices import CASE_LABEL_MAX, case_labels

    long = {"workload_options": {"tag": "x" * 3000}}
    labels = case_labels([{"lr": 0.1}, {"lr": 0.1}, {}, long, {"lr": 0.2}])
    assert labels[0] == "lr=0.1 [case 1]" and labels[1] == "lr=0.1 [case 2]"
    assert labels[2] == "(base)" and labels[4] == "lr=0.2"
    assert labels[3].startswith("workload_options.tag=xxx") and labels[3].endswith("… [case 4]")
    assert len(labels[3]) == CASE_LABEL_MAX
    # A setting that reads like another case's tag still gives distinct labels.
    tricky = case_labels([{"lr": 0.1}, {"lr": 0.1}, {"workload_options": {"t": "1 [case 1]"}}])
    assert len(set(tricky)) == 3
    # Cases that print alike but differ in type (1 and "1") are told apart by their tags.
    alike = case_labels([{"workload_options": {"t": 1}}, {"workload_options": {"t": "1"}}])
    assert alike == ("workload_options.t=1 [case 1]", "workload_options.t=1 [case 2]")
    # Strings from the spec are kept as typed (the dashboard escapes them itself).
    assert (
        case_labels([{"workload_options": {"t": "a|b\n<i>"}}, {}])[0]
        == "workload_options.t=a|b\n<i>"
    )


def test_a_study_whose_case_choices_are_indices_is_refused(tmp_path, storage):
    from bench.errors import BenchError
    from bench.sweep.storage import StorageHandle
    from bench.sweep.study import open_study

    spec = cases_spec(tmp_path)
    study = optuna.create_study(study_name="cases", storage=storage, directions=spec.directions)
    handle = StorageHandle(storage, Coordination("me"), "memory", "journal")
    open_study(spec, handle, tmp_path)  # a fresh study takes the spec
    trial = study.ask()
    trial.suggest_categorical("case", [0, 1, 2, 3])  # as a study that numbered the cases
    with pytest.raises(
        BenchError,
        match=r"chose 'case' from \[0, 1, 2, \.\.\.\], this spec offers \['batch_size=16",
    ):
        open_study(spec, handle, tmp_path)
