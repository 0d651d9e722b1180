"""Step timing that never syncs the device inside the training loop.

After each optimizer step the loop calls ``mark()``: on CUDA that records an event on the
current stream (asynchronous), on the CPU it reads ``time.perf_counter`` (CPU kernels run
synchronously, so the clock is already in step with the work). ``flush()`` resolves the
marks recorded since the last flush into per-step durations; on CUDA that is the one
place it synchronises (nanoGPT's bench.py and TorchBench time the same way).

``resume()`` starts a new reference after work that must not count as training time
(an evaluation pass): the next step's duration is measured from there.
"""

from __future__ import annotations

import time

import torch


class StepClock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list = []  # markers (floats or CUDA events) since the last flush
        self._resumes: set[int] = set()  # positions in _pending that are resume() markers
        self._last = None  # marker the next step is measured from
        self._free_events: list = []
        if not self.cuda:
            # The hot loop calls mark() every step: on the CPU it is one list append of
            # one clock read, with no method layer in between.
            pending, now = self._pending, time.perf_counter
            self.mark = lambda: pending.append(now())

    def _marker(self):
        if not self.cuda:
            return time.perf_counter()
        event = (
            self._free_events.pop() if self._free_events else torch.cuda.Event(enable_timing=True)
        )
        event.record()
        return event

    def start(self) -> None:
        self._last = self._marker()
        self._pending.clear()
        self._resumes.clear()

    def mark(self) -> None:
        self._pending.append(self._marker())

    def resume(self) -> None:
        self._resumes.add(len(self._pending))
        self._pending.append(self._marker())

    def flush(self) -> list[float]:
        """Durations in seconds of the steps marked since the last flush (syncs on CUDA)."""
        markers = self._pending
        if not markers:
            return []
        references = [self._last, *markers[:-1]]
        if self.cuda:
            markers[-1].synchronize()
            durations = [
                a.elapsed_time(b) / 1000.0 for a, b in zip(references, markers, strict=True)
            ]
            self._free_events.extend(references)  # resolved: they can be recorded again
        else:
            durations = [b - a for a, b in zip(references, markers, strict=True)]
        if self._resumes:  # a resume() marker ends a gap, not a step
            durations = [d for i, d in enumerate(durations) if i not in self._resumes]
        self._last = markers[-1]
        markers.clear()  # cleared, not replaced: the CPU mark() holds this list
        self._resumes.clear()
        return durations

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
