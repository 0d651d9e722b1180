"""``bench compare BASELINE CANDIDATE``: what changed, and is it real or noise.

Matching. Trials are matched by *configuration*: the trial's ``config_json`` without its
seed, and without every key whose value is the current ``bench.config.TrialConfig``
default, hashed. Dropping defaulted keys is what lets results written before a field
existed match results written after it, when the new field sits at its default (the
old code behaved as the default does); a key set to anything else still tells two
configurations apart, and a key the current TrialConfig does not know is kept. The
``trial_key`` is *not* the matching key: it hashes every key and the seed, so a new field
changes every key; no ``trial_key`` in common only gives a warning. The seeds of a
configuration are its repeats: each side's repeats form one sample, and the two samples
are compared unpaired. When no configuration matches at all nothing can be compared, and
that is an error (exit 2), not a pass.

Verdict (asv's rule, DESIGN habit 7): a metric is ``improved`` or ``regressed`` only if
the candidate's median differs from the baseline's by more than the threshold (relative,
default 5 %) *and* a two-sided Mann–Whitney U test rejects "same distribution" at
alpha = 0.05. Otherwise ``~``. The test runs on

1. the repeats (per-trial values), when there are enough of them for the test to reach
   alpha at all: the smallest two-sided exact p-value with n1, n2 repeats and no ties is
   2 / C(n1 + n2, n1), so 4 vs 4 (p >= 0.029) can call a change and 3 vs 3 (p >= 0.1)
   never can;
2. otherwise, for timing metrics, the per-step samples of all repeats pooled (step
   durations from ``time_s`` differences, warm-up steps excluded; basis ``within-run
   steps``). These are pseudo-replicates: the steps of one run share that run's machine
   state (other load, clocks, thread placement), so their p-value measures "these two
   runs differ", not "this code differs" — identical code run twice on a busy machine
   gets p ~ 1e-15. So the p-value is shown, but the verdict may be called only with at
   least ``MIN_RUNS`` (2) runs a side whose per-run values (the trial's own metric, e.g.
   its samples/s) are separated by more than the threshold: every candidate run differs
   from every baseline run in the same direction by more than the threshold, i.e.
   min(candidate) > max(baseline) * (1 + t) or max(candidate) < min(baseline) * (1 - t).
   The run-to-run spread, not the step-to-step one, then decides. With overlapping runs
   the verdict is ``~``; with one run on a side it is ``~`` and the row is untested;
3. otherwise nothing: the change is shown and the verdict stays ``~``, because one
   noisy sample must never call a regression.

Rows that no rule could call (3., and 2. with fewer than 2 runs a side) are *untested*:
the summary counts them apart from the tested ``~`` rows, since "no significant change"
and "too few repeats to tell" are different answers.

A configuration whose trials ran ok in the baseline but end oom/diverged/failed in the
candidate is ``regressed`` on ``status`` (and the reverse ``improved``): a new OOM is the
regression a training-efficiency PR most needs to see. ``new``/``missing`` rows list
configurations present on one side only; they do not fail the comparison.

Modules: ``sides`` (a folder loaded and keyed by configuration), ``differences`` (what
makes the sides not like for like: warnings), ``stats`` (Mann–Whitney U and the
run-separation rule, pure), ``comparison`` (the rows and their verdicts), ``render``
(markdown and the GitHub step summary).
"""

from bench.report.compare.comparison import (
    MAX_STEP_SAMPLES,
    MIN_STEP_SAMPLES,
    UNTESTED,
    Comparison,
    Row,
    compare,
    parse_threshold,
    per_step_values,
)
from bench.report.compare.differences import environment
from bench.report.compare.render import SUMMARY_NOTES, append_step_summary, markdown
from bench.report.compare.sides import config_defaults, matching_config
from bench.report.compare.stats import (
    ALPHA,
    MIN_RUNS,
    mann_whitney_p,
    min_two_sided_p,
    runs_separated,
)

__all__ = [
    "ALPHA",
    "MAX_STEP_SAMPLES",
    "MIN_RUNS",
    "MIN_STEP_SAMPLES",
    "SUMMARY_NOTES",
    "UNTESTED",
    "Comparison",
    "Row",
    "append_step_summary",
    "compare",
    "config_defaults",
    "environment",
    "mann_whitney_p",
    "markdown",
    "matching_config",
    "min_two_sided_p",
    "parse_threshold",
    "per_step_values",
    "runs_separated",
]
