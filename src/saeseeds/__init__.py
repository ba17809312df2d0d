"""saeseeds: Top-K SAEs on transformer activations and their stability across seeds."""

__version__ = "0.1.0"
CONTRACT_VERSION = 1
