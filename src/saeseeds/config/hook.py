"""Schema of the ``hook`` group: where in the model activations are read (a TransformerLens hook).

Checks a value can fail on its own (an unknown hook point). Checks that need the model (the layer
in range, the hook present) live in :mod:`saeseeds.activations.hooks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from saeseeds.errors import DataError

HOOK_POINTS = ("resid_pre", "resid_mid", "resid_post", "mlp_out", "attn_out")


@dataclass
class HookConfig:
    """Where in the model activations are read (a TransformerLens hook)."""

    point: str = "resid_pre"
    """resid_pre | resid_mid | resid_post | mlp_out | attn_out."""
    layer: int = 6
    """Block index, from 0."""
    name: str = "blocks.${.layer}.hook_${.point}"
    """The TransformerLens hook name; derived from point and layer, or set to any hook the model
    has (its activations must be [batch, pos, d])."""

    def __post_init__(self) -> None:
        if isinstance(self.layer, int) and self.layer < 0:
            raise DataError(f"hook.layer={self.layer} is not valid; layers count from 0.")
        derived = f"blocks.{self.layer}.hook_{self.point}"
        if self.name == derived and self.point not in HOOK_POINTS:
            raise DataError(
                f"hook.point={self.point!r} is not a hook point; use one of "
                f"{', '.join(HOOK_POINTS)} (or set hook.name to a full hook name)."
            )
