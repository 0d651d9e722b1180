"""Predict, then confirm: the boundary from a memory model, checked by real probes.

Memory is affine in b once activations dominate, M(b) = M0 + m·b (measured on
probes.parquet: R² 1.00000 for teacher-mlp and char-lm), but small b sits on a start-up
floor, so b = 1, 2, 4 give no slope. The model search therefore runs a *ladder*: one
process, under the cap itself, trains b = start (at least 16), 2·start, 4·start, ... one
after another, each job's peak of the *capped* quantity (VmData on the CPU, context +
reserved on CUDA) sampled on its own, until a job does not fit or the limit is reached.
The line through the ladder's two largest fits (b* / 4 < b ≤ b*: the linear regime
whenever b* is past the floor) predicts b̂ = floor((C − M0) / m), kept within the
ladder's bracket [last fit, first failure − 1].

The ladder is one process start for a dozen batch sizes, but not evidence: its jobs run
after others in the same process, which a user's fresh process does not. Real probes,
each a fresh capped process, decide: a search starts at b̂ with steps that double from
1, so one fit at b̂ and one OOM at b̂ + 1 end it when the model is right, and the
galloping steps are the fallback to bisection when it is not; the probe counts say
which happened. The caller confirms the result R times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench.oom.boundary_search import search

# A ladder job: (b, fits, peak bytes of the capped quantity or None).
Rung = tuple[int, bool, int | None]


@dataclass
class Model:
    """The line fitted on the capped quantity, and what it predicted."""

    points: list[tuple[int, int]]  # (b, peak bytes) of the two fits the line runs through
    slope_bytes: float | None  # m, bytes per sample
    intercept_bytes: float | None  # M0
    predicted: int | None  # b̂ (None: no line; the search then bisects from its start)
    ladder: list[int]  # the batch sizes the ladder ran, in order (its last may not fit)
    search_probes: int = 0  # real probes (fresh processes) the search after it ran
    # The line the search ended on: its slope (the ladder's, or two fresh fits') and
    # its anchor, the last fresh fit (b, peak); what a margin search starts from.
    line_slope: float | None = None
    anchor: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def fit_line(p: tuple[int, int], q: tuple[int, int]) -> tuple[float, float]:
    """(m, M0) of the line through two (b, bytes) points."""
    (b1, m1), (b2, m2) = sorted([p, q])
    slope = (m2 - m1) / (b2 - b1)
    return slope, m2 - slope * b2


def predict(capacity: int, slope: float, intercept: float) -> int | None:
    """floor((C − M0) / m), the largest b the line allows; None for a flat line."""
    if slope <= 0:
        return None
    return int((capacity - intercept) // slope)


def ladder_sizes(start: int, upper: int, factor: int = 2) -> list[int]:
    """start (at least 16), ×factor each rung, the last one ``upper``."""
    b, sizes = min(max(16, start), upper), []
    while True:
        sizes.append(b)
        if b >= upper:
            return sizes
        b = min(b * factor, upper)


def model_search(
    probe: Callable[[int], tuple[bool, int | None]],
    ladder: Callable[[list[int]], list[Rung]],
    *,
    capacity: int,
    start: int,
    upper: int,
    tolerance: int = 1,
) -> tuple[int, int | None, Model]:
    """(last fit, first OOM, the model): ``ladder(sizes)`` runs the sizes in one process
    (stopping at the first that does not fit), the line predicts, then real probes
    ``probe(b) -> (fits, peak)`` close in from the prediction (:func:`secant_search`). Pure:
    the callables decide what a run is (a capped child, a stored row, a line in a test)."""
    rungs = ladder(ladder_sizes(start, upper))
    points = [(b, peak) for b, ok, peak in rungs if ok and peak is not None]
    model = Model(points[-2:], None, None, None, [b for b, _, _ in rungs])
    asked: set[int] = set()

    def measured(b: int) -> tuple[bool, int | None]:
        asked.add(b)
        return probe(b)

    if len(points) < 2 or fit_line(*points[-2:])[0] <= 0:
        # No line (a flat floor, or fewer than two fits): search by doubling from the
        # ladder's largest fit, likely a fit for real too.
        first = max([b for b, ok, _ in rungs if ok], default=start)
        lo, hi = search(lambda b: measured(b)[0], start=first, upper=upper, tolerance=tolerance)
    else:
        model.slope_bytes, model.intercept_bytes = fit_line(*points[-2:])
        failed = [b for b, ok, _ in rungs if not ok]
        line = Line(model.slope_bytes, points[-1])
        lo, hi, model.predicted = secant_search(
            measured, line, capacity=capacity, upper=upper, tolerance=tolerance,
            first_cap=failed[0] if failed else None,
        )  # fmt: skip
        model.line_slope, model.anchor = line.slope, line.anchor
    model.search_probes = len(asked)
    return lo, hi, model


@dataclass
class Line:
    """M(b) = peak + slope·(b − b_anchor): a slope in bytes a sample through an anchor
    (b, peak). A search moves the anchor to its latest fresh fit."""

    slope: float
    anchor: tuple[int, int]

    def meets(self, capacity: int) -> int:
        """The largest b the line allows under ``capacity``."""
        b, peak = self.anchor
        return b + int((capacity - peak) // self.slope)


def secant_search(
    measured: Callable[[int], tuple[bool, int | None]],
    line: Line,
    *,
    capacity: int,
    upper: int,
    tolerance: int = 1,
    first_cap: int | None = None,
) -> tuple[int, int | None, int]:
    """(last fit, first OOM, the first guess) by real probes ``measured(b) -> (fits,
    peak)``, starting where ``line`` meets the capacity (at most ``first_cap``: a
    ladder's OOM; its jobs ran after others, a fresh process may fit a little more).

    A fit re-anchors the line on its own fresh peak, so the guess sharpens as it nears
    b*, and two fresh fits far enough apart replace its slope (:func:`_fresh_slope`).
    Once an OOM bounds the interval, a guess at or past it (or below the last fit)
    steps a quarter of the interval instead, and a second such guess in a row bisects:
    the line is wrong there. With no OOM yet, a guess at or below the last fit gallops
    up (steps doubling). ``line`` is left on the last fresh fit."""
    likely = line.anchor[0]  # the line's first anchor: a likely fit (a ladder's rung)
    lo, hi, step, strikes = 0, None, 1, 0
    fresh: list[tuple[int, int]] = []
    guess = first = line.meets(capacity)
    if first_cap is not None:
        guess = min(guess, first_cap)
    while hi is None or hi - lo > max(1, tolerance):
        if hi is None:
            b, step = (min(guess, upper), 1) if guess > lo else (min(lo + step, upper), step * 2)
        else:
            b, strikes = _bounded_guess(guess, lo, hi, likely, strikes)
        ok, peak = measured(b)
        if not ok:
            hi = b
        else:
            lo = b
            if b >= upper:
                return lo, None, first
            if peak is not None:
                line.anchor = (b, peak)
                fresh.append((b, peak))
                line.slope = _fresh_slope(fresh, capacity) or line.slope
        guess = line.meets(capacity)
    return lo, hi, first


def _bounded_guess(guess: int, lo: int, hi: int, likely: int, strikes: int) -> tuple[int, int]:
    """The next b in (lo, hi) and the count of the line's misses in a row."""
    base = max(lo, likely) if likely < hi else lo
    if lo < guess < hi:
        b, strikes = guess, 0
    elif guess == lo:  # the line says lo is b*: lo + 1 is the test of that
        b, strikes = lo + 1, 0
    elif strikes:  # the line missed twice running: it is wrong here, bisect
        b = (base + hi) // 2
    else:
        quarter = max(1, (hi - base) // 4)
        b, strikes = (hi - quarter if guess >= hi else lo + quarter), 1
    return min(max(b, lo + 1), hi - 1), strikes


def _fresh_slope(fresh: list[tuple[int, int]], capacity: int) -> float | None:
    """The slope between the smallest and the largest fresh fit, when their peaks differ
    by at least 1 % of the capacity (a sampled peak moves by a few hundred KiB from run
    to run: closer points give a slope that noise decides). A ladder's slope can be off
    where its process keeps caches between jobs (a CNN's: 16 % measured on resnet)."""
    (b1, p1), (b2, p2) = min(fresh), max(fresh)
    if b2 == b1 or p2 - p1 < capacity / 100:
        return None
    return (p2 - p1) / (b2 - b1)
