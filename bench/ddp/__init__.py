"""Data-parallel trials: one configuration trained on N ranks with DDP.

- :mod:`~bench.ddp.plan`: the arithmetic on N ranks (no torch), ``bench plan --world-size``.

Imports here stay light: ``bench plan`` must not load torch.
"""
