"""Grid claims on the embedded journal: a claimed ticket's owner and parameters go in one
append after the claim's own, and a claim cut off before that append is a lost trial."""

from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from bench.sweep.journal import WholeRecordJournal, open_journal  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402
from bench.sweep.tickets import Tickets  # noqa: E402


class Coordination:
    def __init__(self, owner: str) -> None:
        self.owner = owner

    def take_over(self, owner: str) -> bool:
        return owner != self.owner


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "claims.toml"
    path.write_text(
        '# claims\nname = "claims"\ndevice = "cpu"\nseeds = [0, 1]\n[workload]\n'
        'name = "seed-mlp"\n[base]\nsamples = 64\nbatch_size = 16\n[grid]\nlr = [0.1, 0.2]\n'
    )
    return load_spec(path)


def open_study(spec, path):
    storage = open_journal(path)
    study = optuna.create_study(
        study_name=spec.name, storage=storage, directions=spec.directions, load_if_exists=True
    )
    return storage, study


def test_a_grid_claim_is_two_appends_and_owns_its_parameters(spec, tmp_path, monkeypatch):
    storage, study = open_study(spec, tmp_path / "optuna.journal")
    tickets = Tickets(spec, study, storage, Coordination("me"), log=lambda line: None)
    tickets.reconcile(startup=True)
    appends = []
    real = WholeRecordJournal._append
    monkeypatch.setattr(
        WholeRecordJournal,
        "_append",
        lambda self, logs: (appends.append(len(logs)), real(self, logs)),
    )
    jobs = tickets.claim(4)
    # Per ticket: the claim (WAITING -> RUNNING) alone, then owner + 2 parameters together.
    assert appends == [1, 3] * 4
    _, again = open_study(spec, tmp_path / "optuna.journal")  # what another process reads
    running = again.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 4 == len({j.key for j in jobs})
    for t in running:
        assert t.system_attrs["bench_owner"] == "me"
        assert t.params == dict(spec.points_by_key[t.user_attrs["bench_key"]].params)


def test_a_claim_cut_off_before_its_owner_is_lost_and_ticketed_again(spec, tmp_path, monkeypatch):
    storage, study = open_study(spec, tmp_path / "optuna.journal")
    tickets = Tickets(spec, study, storage, Coordination("dead"), log=lambda line: None)
    tickets.reconcile(startup=True)
    real = WholeRecordJournal._append

    def killed_after_the_claim(self, logs):
        if "bench_owner" in json.dumps(logs):
            raise KeyboardInterrupt  # the coordinator dies before the owner's append
        real(self, logs)

    monkeypatch.setattr(WholeRecordJournal, "_append", killed_after_the_claim)
    with pytest.raises(KeyboardInterrupt):
        tickets.claim(1)
    monkeypatch.setattr(WholeRecordJournal, "_append", real)
    storage, study = open_study(spec, tmp_path / "optuna.journal")
    resumed = Tickets(spec, study, storage, Coordination("next"), log=lambda line: None)
    counts = resumed.reconcile(startup=True)
    lost = [t for t in study.get_trials() if t.user_attrs.get("bench_status") == "lost"]
    assert len(lost) == 1 and "bench_owner" not in lost[0].system_attrs
    # Every key has exactly one live ticket again, the lost one's included.
    assert (counts.waiting, counts.running, counts.done) == (4, 0, 0)
    keys = [j.key for j in resumed.claim(4)]
    assert sorted(keys) == sorted(spec.points_by_key)
