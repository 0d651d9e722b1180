"""Predict, then confirm: the boundary from a memory model, checked by real probes.

Memory is affine in b once activations dominate, M(b) = M0 + m·b (measured on
probes.parquet: R² 1.00000 for teacher-mlp and char-lm), but small b sits on a start-up
floor, so b = 1, 2, 4 give no slope. The model search therefore probes upwards by
factors of 8 from ``start`` (at least 16) under the cap itself, until the last two fits
grew by at least a tenth of the budget (or a probe ran out of memory), fits the line
through those two on the peak of the *capped* quantity (VmData on the CPU, context +
reserved on CUDA), and predicts b̂ = floor((C − M0) / m). A single-run search then
starts at b̂ with steps that double from 1: one fit at b̂ and one OOM at b̂ + 1 end it
when the model is right, and the galloping steps are the fallback to bisection when it
is not; the probe counts say which happened. The caller confirms the result R times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench.oom.boundary_search import search


@dataclass
class Model:
    """The line fitted on the capped quantity, and what it predicted."""

    points: list[tuple[int, int]]  # (b, peak bytes) of the two fits the line runs through
    slope_bytes: float | None  # m, bytes per sample
    intercept_bytes: float | None  # M0
    predicted: int | None  # b̂ (None: no line, or the limit was reached while scanning)
    scan_probes: int = 0  # probes before the prediction

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


def model_search(
    probe: Callable[[int], tuple[bool, int | None]],
    *,
    capacity: int,
    baseline: int,
    start: int,
    upper: int,
    tolerance: int = 1,
    factor: int = 8,
) -> tuple[int, int | None, Model]:
    """(last fit, first OOM, the model) from ``probe(b) -> (fits, peak bytes)``: scan,
    predict, refine once, then search from the prediction. Pure: ``probe`` decides what
    a run is (a capped child process, a stored row, or a line in a test)."""
    seen: dict[int, tuple[bool, int | None]] = {}

    def fits(b: int) -> bool:
        if b not in seen:
            seen[b] = probe(b)
        return seen[b][0]

    def points() -> list[tuple[int, int]]:  # the fits with a peak, by b
        return sorted((b, p) for b, (ok, p) in seen.items() if ok and p is not None)

    lo, hi = _scan(fits, points, min(max(16, start), upper), upper, capacity - baseline, factor)
    model = Model(points()[-2:], None, None, None, scan_probes=len(seen))
    if hi is None and lo >= upper:
        return lo, None, model  # everything up to the limit fits
    high = upper if hi is None else hi - 1  # the scan's OOM bounds the search
    guess = _predict(points(), capacity)
    for _ in range(3):
        if guess is None or min(guess, high) - lo <= 8:
            break
        # A probe 3/4 of the way to the prediction: it most likely fits, and a line
        # through it and the scan's largest fit lies wholly in the linear regime (the
        # scan's lower point may still sit on the start-up floor). One that does not
        # fit lowers the bound, and the next try goes 3/4 of the way to that.
        refine = lo + (min(guess, high) - lo) * 3 // 4
        if fits(refine):
            lo = refine
            guess = _predict(points(), capacity)
            break
        high = refine - 1
    model.points, model.predicted = points()[-2:], guess
    if len(model.points) == 2:
        model.slope_bytes, model.intercept_bytes = fit_line(*model.points)
    start_at = max(max(lo, 1), min(guess if guess is not None else lo, high))
    found_lo, found_hi = search(fits, start=start_at, first_step=1, upper=high, tolerance=tolerance)
    if found_hi is None and high < upper:
        found_hi = min(b for b, (ok, _) in seen.items() if not ok and b > found_lo)
    return found_lo, found_hi, model


def _scan(fits, points, b: int, upper: int, budget: int, factor: int) -> tuple[int, int | None]:
    """Up by ``factor`` from b until the last two fits grew by a tenth of the budget,
    the limit, or an OOM; after an OOM, halfway between the last fit and it until two
    fits with a peak differ by a hundredth of the budget. At most 8 probes. Returns
    (last fit, first OOM)."""
    lo, hi = 0, None
    for _ in range(8):
        if fits(b):
            lo = b
            pts = points()
            if b >= upper or (len(pts) >= 2 and pts[-1][1] - pts[-2][1] >= budget / 10):
                break
        else:
            hi = b
            pts = points()
            if len(pts) >= 2 and pts[-1][1] - pts[-2][1] >= budget / 100:
                break  # a slope to predict from (two points on the floor give none)
        nxt = min(b * factor, upper) if hi is None else (lo + hi) // 2
        if nxt in (lo, hi) or nxt < 1:
            break
        b = nxt
    return lo, hi


def _predict(points: list[tuple[int, int]], capacity: int) -> int | None:
    """b̂ from the line through the two largest fits, or None without two."""
    if len(points) < 2:
        return None
    return predict(capacity, *fit_line(*points[-2:]))
