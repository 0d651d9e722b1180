"""Writes to one Optuna trial through the study's storage.

Optuna's storage API addresses a trial by an internal id that Trial and FrozenTrial keep
in the private ``_trial_id``; this adapter is the one place that reads it. The storage,
not ``Trial.set_user_attr``, because the tickets also write to trials they only hold as
FrozenTrial (from ``study.get_trials``): lost trials, sampled duplicates.

It also reads the storage's private ``_backend`` (:meth:`TrialWriter.batched`): Optuna's
``JournalStorage`` has no public way to append several records at once.
"""

from __future__ import annotations

import contextlib
from typing import Any


class TrialWriter:
    def __init__(self, storage: Any) -> None:
        self.storage = storage  # an optuna BaseStorage

    @staticmethod
    def trial_id(trial: Any) -> int:
        return trial._trial_id

    def batched(self) -> contextlib.AbstractContextManager:
        """A block whose writes reach the storage together at its end, where the storage
        can (the embedded journal: :meth:`bench.sweep.journal.WholeRecordJournal.batched`);
        elsewhere (PostgreSQL) each write goes at once, as outside it."""
        batched = getattr(getattr(self.storage, "_backend", None), "batched", None)
        return batched() if callable(batched) else contextlib.nullcontext()

    def set_user_attr(self, trial: Any, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(trial), key, value)

    def set_system_attr(self, trial: Any, key: str, value: Any) -> None:
        self.storage.set_trial_system_attr(self.trial_id(trial), key, value)

    def fail(self, trial: Any) -> None:
        """Move a RUNNING trial to FAIL (raises UpdateFinishedTrialError if it finished)."""
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(self.trial_id(trial), TrialState.FAIL)
