"""bench: measure what batch size, accumulation and precision do to training."""

__version__ = "0.1.0"
