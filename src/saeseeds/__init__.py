"""saeseeds: Top-K SAEs on transformer activations, and how stable their features are across seeds."""

__version__ = "0.1.0"
CONTRACT_VERSION = 1
