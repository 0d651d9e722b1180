"""One capacity's answer: the boundary found by probes, and the safe batch after a
memory margin.

The safety margin is a share of memory, not of batch: "after a 10 % margin" is the
largest b that fits in 90 % of the capacity, found by a second, short search (galloping
from ``floor(b* x 0.9)`` in small steps, then bisecting) under that reduced cap, so the
reported safe batch was itself run, not extrapolated.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from bench.oom.boundary_search import confirm_band, probe_bound, search
from bench.oom.model_search import Line, model_search, secant_search
from bench.oom.prober import ProbeFailed, Prober, peak_bytes, searched_value


@dataclass
class Boundary:
    """Result of one search: ``boundary`` fits, ``first_oom`` does not (None: never hit).

    With ``repeats`` R > 1 both ends are confirmed: ``boundary`` fit in all R runs and
    ``first_oom`` failed in all R; ``exact`` says they are adjacent (b* is known), else
    they bound a band where runs disagree."""

    boundary: int  # largest b proven to fit (0: not even the smallest tried)
    first_oom: int | None  # smallest b proven not to fit
    limited_by: str | None  # "max-batch" / "dataset" when the search hit the upper limit
    probes: int  # the search's probes (within probe_bound)
    new_probes: int  # probes run, not reused: search and confirmation
    wall_s: float
    repeats: int = 1  # R: runs per b at the ends of the band
    confirm_probes: int = 0  # probes asked by the confirmation (beyond the search's)
    exact: bool = True  # first_oom - boundary <= tolerance (or no OOM up to the limit)
    model: dict | None = None  # the memory model's line and prediction (--search model)

    @property
    def band(self) -> list[int | None] | None:
        """[last always-fits, first always-fails] when b* is not known, else None."""
        return None if self.exact else [self.boundary, self.first_oom]


def find_boundary(
    prober: Prober,
    *,
    start: int,
    upper: int,
    tolerance: int,
    first_step: int | None = None,
    on_probe=None,
    repeats: int = 1,
    model_capacity: int | None = None,
    line: Line | None = None,
) -> Boundary:
    """The boundary search with ``prober``'s probes as ``fits``: ok fits, oom does not,
    and any other outcome raises ProbeFailed (it would read as a wrong boundary). With
    ``model_capacity`` (the capacity in the capped quantity) the memory model predicts
    where to search (bench.oom.model_search); with ``line`` (a fresh line from such a
    search) real probes start where it meets the prober's capacity, no ladder. With
    ``repeats`` R > 1 the ends are then confirmed by R runs each (confirm_band)."""
    before_probes, before_new = prober.probes, prober.new_probes
    t0 = time.perf_counter()

    def run(b: int, repeat: int = 0) -> dict:
        row = prober.run(b) if repeat == 0 else prober.run(b, repeat=repeat)
        if on_probe is not None:
            on_probe(row)
        if row["outcome"] not in ("ok", "oom"):
            raise ProbeFailed(row)
        return row

    def fits(b: int, repeat: int = 0) -> bool:
        return run(b, repeat)["outcome"] == "ok"

    def measured(b: int) -> tuple[bool, int | None]:
        row = run(b)
        return row["outcome"] == "ok", peak_bytes(row)

    def ladder(sizes: list[int]) -> list[tuple[int, bool, int | None]]:
        rows = prober.ladder(sizes)
        return [(r["micro_batch_size"], r["outcome"] == "ok", peak_bytes(r)) for r in rows]

    model = None
    if line is not None and prober.capacity_bytes is not None:
        lo, hi, _ = secant_search(
            measured, line, capacity=prober.capacity_bytes, upper=upper, tolerance=tolerance
        )
    elif model_capacity is None:
        lo, hi = search(fits, start=start, first_step=first_step, upper=upper, tolerance=tolerance)
    else:
        lo, hi, model = model_search(
            measured, ladder, capacity=model_capacity, start=start, upper=upper, tolerance=tolerance
        )
    searched = prober.probes - before_probes
    if repeats > 1 and (lo > 0 or hi is not None):
        lo, hi = confirm_band(fits, lo, hi, repeats=repeats, upper=upper, tolerance=tolerance)
    return Boundary(
        boundary=lo,
        first_oom=hi,
        limited_by=None,
        probes=searched,
        new_probes=prober.new_probes - before_new,
        wall_s=time.perf_counter() - t0,
        repeats=repeats,
        confirm_probes=prober.probes - before_probes - searched,
        exact=lo >= upper if hi is None else hi - lo <= max(1, tolerance),
        model=None if model is None else model.to_dict(),
    )


def margin_search(
    prober: Prober,
    *,
    raw_boundary: int,
    margin_pct: float,
    upper: int,
    tolerance: int,
    repeats: int = 1,
    line: Line | None = None,
) -> Boundary:
    """The largest b that fits under ``prober``'s reduced capacity: gallop from the raw
    boundary scaled by (1 - margin), in steps of 1/32 of it, then bisect; or, with the
    model search's fresh ``line``, from where that line meets the reduced capacity
    (bench.oom.model_search.secant_search). It never looks past the raw boundary: less
    memory cannot hold more."""
    estimate = max(1, int(raw_boundary * (1 - margin_pct / 100)))
    bound = find_boundary(
        prober,
        start=estimate,
        first_step=max(tolerance, estimate // 32, 1),
        upper=min(upper, raw_boundary),
        tolerance=tolerance,
        repeats=repeats,
        line=line,
    )
    if bound.first_oom is None:
        bound.limited_by = "raw boundary"
    return bound


def nothing_fits() -> Boundary:
    """The margin search's answer when the reduced capacity holds not even the baseline."""
    return Boundary(0, None, None, 0, 0, 0.0)


def fitting_row(rows: list[dict], b: int) -> dict | None:
    """The latest probe row at searched value ``b`` (micro-batch, or stack size) that
    fit, or None."""
    for row in reversed(rows):
        if searched_value(row) == b and row["outcome"] == "ok":
            return row
    return None


@dataclass
class CapacityResult:
    capacity_bytes: int
    capped: bool
    boundary: Boundary
    margin_pct: float
    margin_capacity_bytes: int | None = None
    safe: Boundary | None = None  # the search under capacity x (1 - margin)
    peak_at_boundary_bytes: int | None = None
    plan: dict | None = None

    @property
    def safe_batch(self) -> int:
        return self.boundary.boundary if self.safe is None else self.safe.boundary

    def to_dict(self) -> dict:
        d = {
            "capacity_bytes": self.capacity_bytes,
            "capped": self.capped,
            "boundary": self.boundary.boundary,
            "first_oom": self.boundary.first_oom,
            "exact": self.boundary.exact,
            "band": self.boundary.band,
            "repeats": self.boundary.repeats,
            "confirm_probes": self.boundary.confirm_probes,
            "model": self.boundary.model,
            "limited_by": self.boundary.limited_by,
            "margin_pct": self.margin_pct,
            "margin_capacity_bytes": self.margin_capacity_bytes,
            "boundary_after_margin": self.safe_batch,
            "peak_at_boundary_bytes": self.peak_at_boundary_bytes,
            "probes": self.boundary.probes,
            "new_probes": self.boundary.new_probes,
            "search_wall_s": round(self.boundary.wall_s, 3),
            "probe_bound": probe_bound(self.boundary.boundary),
        }
        if self.safe is not None:
            d["margin_search"] = asdict(self.safe)
        if self.plan is not None:
            d["plan"] = self.plan
        return d
