"""saeseeds: sparse autoencoders on transformer activations and their stability across seeds."""

import warnings

__version__ = "0.1.0"

# conf/hydra/launcher/*.yaml extend the launcher plugins' configs of the same names; Hydra 1.3
# merges them (checking our fields against the plugin's schema) and warns that this is deprecated.
# Every field is spelled out in our files, so they keep working if Hydra drops the merge.
warnings.filterwarnings(
    "ignore",
    message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema",
    category=UserWarning,
)
