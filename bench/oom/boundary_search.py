"""The boundary search itself: pure arithmetic over a ``fits(b) -> bool`` callable.

No I/O, no torch, no processes: the caller decides what "fits" means (a probe in a
capped child process, a stored row, or a threshold in a test). From start 1 with
boundary b*, doubling takes floor(log2 b*) + 2 probes and bisecting the interval
(2^j, 2^(j+1)) takes j more, so an exact search costs at most 2*log2(b*) + 2 probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def search(
    fits: Callable[[int], bool],
    *,
    start: int = 1,
    first_step: int | None = None,
    upper: int,
    tolerance: int = 1,
) -> tuple[int, int | None]:
    """Largest b in [1, upper] with ``fits(b)``, assuming fits is monotone (true, then false).

    Gallops from ``start``: up by steps that double from ``first_step`` (default
    ``start``, which makes it plain doubling: 1, 2, 4, ...) until a probe fails or
    ``upper`` is reached; or, if ``start`` fails, down by doubling steps until one fits.
    Then bisects until the last fit and the first failure are ``tolerance`` apart.
    Returns (last fit or 0, first failure or None). Each b is asked at most once.
    """
    if upper < 1:
        raise ValueError("upper must be >= 1")
    start = max(1, min(start, upper))
    step = max(1, first_step if first_step is not None else start)
    if fits(start):
        lo, hi = _gallop_up(fits, start, step, upper)
    else:
        lo, hi = _gallop_down(fits, start, step)
    if hi is None:
        return lo, None
    return _bisect(fits, lo, hi, tolerance)


def _gallop_up(
    fits: Callable[[int], bool], lo: int, step: int, upper: int
) -> tuple[int, int | None]:
    """From a fit at ``lo``: up by doubling steps to the first failure, or to ``upper``."""
    while lo < upper:
        b = min(lo + step, upper)
        if not fits(b):
            return lo, b
        lo = b
        step *= 2
    return lo, None


def _gallop_down(fits: Callable[[int], bool], hi: int, step: int) -> tuple[int, int]:
    """From a failure at ``hi``: down by doubling steps to a fit, or to b = 1 (lo = 0)."""
    while hi > 1:
        b = max(1, hi - step)
        if fits(b):
            return b, hi
        hi = b
        step *= 2
    return 0, hi


def _bisect(fits: Callable[[int], bool], lo: int, hi: int, tolerance: int) -> tuple[int, int]:
    while hi - lo > max(1, tolerance):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def probe_bound(boundary: int) -> int | None:
    """2*log2(b) + 2, the probe budget of an exact search from start 1."""
    return None if boundary < 1 else int(math.floor(2 * math.log2(boundary) + 2))


def confirm_band(
    fits: Callable[[int, int], bool],
    lo: int,
    hi: int | None,
    *,
    repeats: int,
    upper: int,
    tolerance: int = 1,
) -> tuple[int, int | None]:
    """The band [last always-fits, first always-fails] around a search's (lo, hi).

    ``fits(b, i)`` is the i-th of ``repeats`` runs at b (i = 0 is the run the search
    already made, so a caller that stores runs pays ``repeats - 1`` new ones). b always
    fits when all its runs fit, always fails when none does; a mix is noise at the
    boundary. ``lo`` moves down (steps 1, 2, 4, ...) until it always fits (0: nothing
    does), ``hi`` up until it always fails (None: nothing up to ``upper`` does), then
    both close in by bisection while the verdicts are clean. Every b asked lies in
    [1, upper]; the answer is exact when ``hi - lo <= tolerance``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    upper = max(1, upper)

    def always(b: int) -> bool:  # all() stops at the first failure: no wasted runs
        return all(fits(b, i) for i in range(repeats))

    def never(b: int) -> bool:
        return not any(fits(b, i) for i in range(repeats))

    lo, hi = max(0, min(lo, upper)), None if hi is None or hi > upper else hi
    step = 1
    while lo >= 1 and not always(lo):
        lo, step = max(0, lo - step), step * 2
    step = 1
    while hi is not None and not never(hi):
        hi = None if hi >= upper else min(hi + step, upper)
        step *= 2
    top = upper + 1 if hi is None else hi
    a, c = lo, top  # largest always-fits below the first always-fails (or the limit)
    while c - a > max(1, tolerance):
        mid = (a + c) // 2
        a, c = (mid, c) if always(mid) else (a, mid)
    lo, c = a, top  # smallest always-fails above it
    while c - a > max(1, tolerance):
        mid = (a + c) // 2
        a, c = (a, mid) if never(mid) else (mid, c)
    return lo, (None if c > upper else c)
