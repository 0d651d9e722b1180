"""The result of a trial whose process never reported one (killed, timed out, crashed)."""

from __future__ import annotations

from typing import Any


def unreported_trial_result(config: Any, *, status: str, error: str, sweep: str | None = None):
    """A TrialResult for ``config`` (a TrialConfig) with ``status`` and ``error`` and no
    steps: the row a sweep or a probe records when the trial's process ended without a
    result of its own."""
    import datetime as dt
    import json

    import pandas as pd

    from bench import store
    from bench.trial import TrialResult

    row = {
        "trial_key": config.trial_key,
        "sweep": sweep,
        "workload": config.workload,
        "mode": config.mode,
        "samples": config.samples,
        "micro_batch_size": config.batch_size,
        "accumulation_steps": config.accumulation_steps,
        "effective_batch_size": None
        if config.batch_size is None
        else config.batch_size * config.accumulation_steps,
        "normalize": config.normalize,
        "partial_window": config.partial_window,
        "drop_last": config.drop_last,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "scheduler": config.scheduler,
        "precision": config.precision,
        "data_path": config.data_path,
        "seed": config.seed,
        "status": status,
        "error": error,
        "config_json": json.dumps(config.to_dict(), sort_keys=True, default=str),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "schema_version": store.SCHEMA_VERSION,
    }
    steps = pd.DataFrame(columns=list(store.STEP_COLUMNS))
    return TrialResult(trial=row, steps=steps)
