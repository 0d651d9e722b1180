"""StepClock on the CPU: durations between marks, resume() gaps left out, flush resets."""

import time

import torch

from bench.meters.clock import StepClock


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_steps_are_timed_between_marks_and_resume_gaps_are_left_out():
    clock = StepClock(torch.device("cpu"))
    clock.start()
    spin(0.002)
    clock.mark()  # step 1: ~2 ms
    spin(0.004)
    clock.mark()  # step 2: ~4 ms
    spin(0.200)  # an evaluation: not training time
    clock.resume()
    spin(0.003)
    clock.mark()  # step 3: ~3 ms, measured from resume()
    first = clock.flush()
    assert len(first) == 3
    assert 0.002 <= first[0] < 0.15 and 0.004 <= first[1] < 0.15 and 0.003 <= first[2] < 0.15

    spin(0.200)  # a flush's own time, also left out after resume()
    clock.resume()
    spin(0.001)
    clock.mark()
    second = clock.flush()
    assert len(second) == 1 and 0.001 <= second[0] < 0.15
    assert clock.flush() == []  # nothing pending


def test_mark_keeps_working_after_flushes():
    # mark() on the CPU appends to the pending list directly: flush must clear that list,
    # not replace it, or later marks would be lost.
    clock = StepClock(torch.device("cpu"))
    clock.start()
    for _ in range(3):
        clock.mark()
        clock.mark()
        assert len(clock.flush()) == 2
