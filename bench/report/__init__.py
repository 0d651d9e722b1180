"""Report and compare: turn results folders into figures, tables and PR verdicts.

Modules (each imports pandas at most at top level; seaborn/matplotlib load lazily):

- ``prepare``: configuration identity (config without seed), labels, derived columns.
- ``labels``: a configuration's names: full label, id (C1, C2, ...), short label.
- ``memory``: the memory a trial adds per counter, and the smallest difference it resolves.
- ``pareto``: the Pareto front where differences within the measured noise are ties.
- ``metrics``: the metrics compare knows, with their direction and units.
- ``scaling``: steps-to-target per trial and the S(B) = S_min (1 + B_crit / B) fit.
- ``curves``: bin-mean downsampling of loss curves for plotting (never the data).
- ``tables``: per-configuration summary, the rows of the report's tables and its legend.
- ``markdown``: the one GitHub markdown table printer and cell escaping rule.
- ``figures``: seaborn figures (PNG + SVG), one module per figure.
- ``html``: one self-contained index.html.
- ``folders``: which results a folder holds (one sweep, several, none: what instead).
- ``build``: ``bench report``'s pipeline, report.md and the files written.
- ``compare``: baseline vs candidate with threshold + Mann-Whitney U.
- ``command``: argparse wiring for ``python -m bench report`` / ``compare``.
- ``synthetic``: results with planted answers, for tests and the scale benchmark.
"""
