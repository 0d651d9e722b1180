"""The result of a trial whose process never reported one (killed, timed out, crashed)."""

from __future__ import annotations

from typing import Any


def unreported_trial_result(config: Any, *, status: str, error: str, sweep: str | None = None):
    """A TrialResult for ``config`` (a TrialConfig) with ``status`` and ``error`` and no
    steps: the row a sweep or a probe records when the trial's process ended without a
    result of its own. The row comes from the records module, like every other row."""
    import pandas as pd

    from bench import records
    from bench.trial import TrialResult

    row = records.unreported_trial_row(config, status=status, error=error, sweep=sweep)
    return TrialResult(
        trial=row, steps=pd.DataFrame(columns=list(records.columns(records.StepRecord)))
    )
