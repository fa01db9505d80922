"""cmr-repro: a reproducible study of Contextual Memory Reweaving (arXiv 2502.02046)."""

__version__ = "0.1.0"
