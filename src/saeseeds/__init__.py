"""saeseeds: sparse autoencoders on transformer activations and their stability across seeds."""

__version__ = "0.1.0"
