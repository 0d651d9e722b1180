"""A sweep's study as optuna-dashboard shows it: its own HTTP API, served on 127.0.0.1,
read as its web page reads it. The dashboard cuts a user attribute at 1,024 characters
and names objectives by the study's metric_names; what a user looks for there
(samples/s, the objective by name, what each case is) must come through."""

from __future__ import annotations

import io
import json
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

optuna_dashboard = pytest.importorskip("optuna_dashboard")

from bench.sweep.runner import run_sweep  # noqa: E402
from bench.sweep.spec import load_spec  # noqa: E402

SPEC = """\
# Does the dashboard show what matters?
name = "dash"
device = "cpu"
[workload]
name = "seed-mlp"
options = { val_samples = 8 }
[base]
samples = 64
[budget]
epochs = 1
[[cases]]
batch_size = 16
accumulation_steps = 1
[[cases]]
batch_size = 8
accumulation_steps = 2
"""


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per request is noise in a test
        pass


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(the API's base URL, the spec): a two-trial sweep run, then its journal served by
    optuna-dashboard's WSGI app on an ephemeral port of 127.0.0.1."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    tmp = tmp_path_factory.mktemp("dash")
    path = tmp / "dash.toml"
    path.write_text(SPEC)
    spec = load_spec(path)
    summary = run_sweep(spec, results=tmp / "results", stream=io.StringIO(), tty=False)
    assert summary.exit_code == 0
    storage = JournalStorage(JournalFileBackend(str(tmp / "results/dash/optuna.journal")))
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", spec
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def study_detail(base: str) -> dict:
    (study,) = [
        s for s in get(f"{base}/api/studies")["study_summaries"] if s["study_name"] == "dash"
    ]
    return get(f"{base}/api/studies/{study['study_id']}?after=0")


def test_the_dashboard_api_returns_samples_per_s_for_a_finished_trial(dashboard):
    base, _ = dashboard
    detail = study_detail(base)
    finished = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(finished) == 2
    for trial in finished:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert float(attrs["samples_per_s"]) > 0
        assert float(attrs["tail_loss"]) == pytest.approx(trial["values"][0])
        assert all(len(v) < 1024 for k, v in attrs.items() if k != "bench_row")
    assert detail["objective_names"] == ["tail_loss"]  # a grid's default, by name


def test_the_dashboard_shows_each_case_by_its_settings(dashboard):
    base, spec = dashboard
    detail = study_detail(base)
    shown = {
        p["param_external_value"]
        for t in detail["trials"]
        for p in t["params"]
        if p["name"] == "case"
    }
    assert shown == {"batch_size=16 accumulation_steps=1", "batch_size=8 accumulation_steps=2"}
    assert shown == set(spec.case_labels)
