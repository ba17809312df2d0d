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
    """Held-out FVU at fixed fractions of training; checkpointed, so a resumed run keeps it."""

    def __init__(self, heldout: Tensor, batch_size: int):
        self.heldout, self.batch_size = heldout, batch_size
        self.points: dict[str, float] = {}  # "0.25" -> held-out FVU

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        total = module.total_steps
        for fraction in CURVE_FRACTIONS:
            key = f"{fraction:g}"
            if key not in self.points and trainer.global_step >= max(1, round(fraction * total)):
                self.points[key] = self._fvu(module)

    @torch.no_grad()
    def _fvu(self, module: Any) -> float:
        sae = module.sae
        was_training = sae.training
        sae.eval()
        try:
            # FVU does not depend on the input scale, so the training-scale SAE can be used.
            metrics, _, _ = evaluate_heldout(
                sae, self.heldout * module.input_scale, self.batch_size
            )
        finally:
            sae.train(was_training)
        return metrics["fvu"]

    def state_dict(self) -> dict[str, Any]:
        return {"points": dict(self.points)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = dict(state_dict.get("points", {}))
