"""Activation sources: where the vectors an SAE trains on come from.

Each source is a small class that Hydra instantiates from ``conf/data/<option>.yaml``. Every source
implements :class:`saeseeds.data.base.ActivationSource`; the training app depends on nothing else.
"""
