"""``bench oom``'s text output: what was probed, one row per capacity, the planner's
pick per capacity, and where the probes are (``--json`` prints the same dict as JSON)."""

from __future__ import annotations

from bench.config import format_bytes
from bench.console import text_table


def render(out: dict) -> str:
    """The command's result dict (see bench.oom.command.main) as text tables."""
    lines = [*_preamble(out), _boundary_table(out)]
    if out["target_batch"] is not None and any(c.get("plan") for c in out["capacities"]):
        lines += [
            "",
            f"planner: target batch {out['target_batch']} = b x k "
            f"(b divides {out['target_batch']}; fastest measured without the cap, "
            "then run under it)",
            _planner_table(out),
        ]
    lines += ["", f"probes: {out['probes_path']}   total time {out['wall_s']:.1f} s"]
    return "\n".join(lines)


def _preamble(out: dict) -> list[str]:
    opts = ", ".join(f"{k}={v}" for k, v in sorted(out["workload_options"].items())) or "defaults"
    evaluation = " + evaluation" if out["evaluation"] else ""
    stack = out.get("stack_batch")
    searched = "oom boundary" if stack is None else f"oom stack size S (members at b={stack})"
    what = (
        f"{searched}: {out['workload']} ({opts}), {out['precision']}, {out['optimizer']}, "
        f"{out['steps_per_probe']} optimizer steps{evaluation} per probe, "
        f"on {out['device_name'] or out['device']}"
    )
    baseline = format_bytes(out["baseline_bytes"])
    if out["device"].startswith("cuda"):
        cap = (
            f"cap: {out['cap_method']}; CUDA context {baseline} measured, "
            "outside the allocator's fraction (subtracted from each capacity)"
        )
    else:
        peak = (
            "peak = VmData, what the cap counts, sampled every 1 ms"
            if out["cap_method"] == "rlimit-data"
            else "peak = the probe process's RSS"
        )
        cap = (
            f"cap: {out['cap_method']}; idle probe process baseline {baseline} "
            f"(VmData; the capacity is this baseline + the training budget); {peak}"
        )
    return [what, cap]


def _boundary_table(out: dict) -> str:
    capacities = out["capacities"]
    margin = f"after {capacities[0]['margin_pct']:g}% margin" if capacities else "after margin"
    boundary = "boundary" if out.get("stack_batch") is None else "largest S"
    header = (
        "capacity", boundary, "first OOM", margin, f"peak at {boundary}",
        "probes: search + confirm (new)", "bound", "search time",
    )  # fmt: skip
    rows = []
    for c in capacities:
        limit = f" (= {c['limited_by']} limit)" if c["limited_by"] else ""
        rows.append(
            (
                format_bytes(c["capacity_bytes"]),
                _boundary_cell(c) + limit,
                "-" if c["first_oom"] is None else c["first_oom"],
                c["boundary_after_margin"]
                or f"none ({'b' if boundary == 'boundary' else 'S'}=1 OOMs)",
                format_bytes(c["peak_at_boundary_bytes"]),
                f"{c['probes']} + {c.get('confirm_probes', 0)} ({c['new_probes']})",
                "-" if c["probe_bound"] is None else c["probe_bound"],
                f"{c['search_wall_s']:.1f} s",
            )
        )
    return text_table(header, rows)


def _speed_cell(rec: dict) -> str:
    low, high = rec.get("samples_per_s_min"), rec.get("samples_per_s_max")
    spread = "" if low is None or high is None else f" ({low:.1f}-{high:.1f})"
    return f"{rec['samples_per_s']:.1f}{spread}"


def _boundary_cell(c: dict) -> str:
    """b* when it fit R of R and b* + 1 failed R of R; else the band those runs leave."""
    if c.get("exact", True):
        return str(c["boundary"])
    high = "-" if c["first_oom"] is None else c["first_oom"]
    return f"band {c['boundary']}..{high} (R={c['repeats']})"


def _planner_table(out: dict) -> str:
    header = (
        "capacity", "boundary", "safe b", "b", "k", "samples/s (median, min-max, uncapped)",
        "peak memory (capped)", "headroom",
    )  # fmt: skip
    rows = []
    for c in out["capacities"]:
        first = (format_bytes(c["capacity_bytes"]), c["boundary"], c["boundary_after_margin"])
        rec = (c.get("plan") or {}).get("recommended")
        if rec is None:
            rows.append((*first, "-", "-", "no split fits", "-", "-"))
            continue
        rows.append(
            (
                *first,
                rec["micro_batch_size"],
                rec["accumulation_steps"],
                _speed_cell(rec),
                format_bytes(rec["peak_bytes"]),
                format_bytes(rec["headroom_bytes"]),
            )
        )
    return text_table(header, rows)
