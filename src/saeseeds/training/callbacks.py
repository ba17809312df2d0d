"""Lightning callbacks of the training app.

:class:`HeldoutCurve` measures the held-out FVU at 25%, 50%, 75% and 100% of training, so that
metrics.json says whether a run was still improving at the end (the analysis flags groups that
were). It only reads the SAE; no RNG is touched, so runs with and without it are identical.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from saeseeds.training.metrics import evaluate_heldout

CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


class HeldoutCurve(Callback):
    """Held-out FVU at fixed fractions of training, one curve per SAE the module trains
    (``module.trained_saes``); checkpointed, so a resumed run keeps it."""

    def __init__(self, heldout: Tensor, batch_size: int):
        self.heldout, self.batch_size = heldout, batch_size
        self.curves: list[dict[str, float]] = []  # per SAE: "0.25" -> held-out FVU

    @property
    def points(self) -> dict[str, float]:
        """The curve of the first (for a one-SAE module, the only) SAE."""
        return self.curves[0] if self.curves else {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        saes = module.trained_saes
        self.curves.extend({} for _ in range(len(saes) - len(self.curves)))
        total = module.total_steps
        for fraction in CURVE_FRACTIONS:
            key = f"{fraction:g}"
            if key in self.curves[0] or trainer.global_step < max(1, round(fraction * total)):
                continue
            for sae, points in zip(saes, self.curves, strict=False):
                points[key] = self._fvu(sae, module.input_scale)

    @torch.no_grad()
    def _fvu(self, sae: Any, input_scale: float) -> float:
        was_training = sae.training
        sae.eval()
        try:
            # FVU does not depend on the input scale, so the training-scale SAE can be used.
            metrics, _, _ = evaluate_heldout(sae, self.heldout * input_scale, self.batch_size)
        finally:
            sae.train(was_training)
        return metrics["fvu"]

    def state_dict(self) -> dict[str, Any]:
        return {"points": dict(self.points), "curves": [dict(curve) for curve in self.curves]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        curves = state_dict.get("curves")
        if curves is None:  # a checkpoint written before several SAEs per module
            curves = [state_dict.get("points", {})]
        self.curves = [dict(curve) for curve in curves]
