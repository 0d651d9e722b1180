"""Data-parallel trials: one configuration trained on N ranks with DDP.

- :mod:`~bench.ddp.plan`: the arithmetic on N ranks (no torch), ``bench plan --world-size``.
- :mod:`~bench.ddp.comm`: the counted gradient all-reduce (a DDP communication hook).
- :mod:`~bench.ddp.rank`: one rank: its process group, DDP wrapper and training hooks.
- :mod:`~bench.ddp.launch`: starting the ranks (bench children) and one trial of them.

Imports here stay light: ``bench plan`` must not load torch.
"""
