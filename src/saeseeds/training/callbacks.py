"""Lightning callbacks of the training app.

:class:`HeldoutCurve` measures the held-out FVU at 25%, 50%, 75% and 100% of training, so that
metrics.json says whether a run was still improving at the end (the analysis flags groups that
were). :class:`StopOnNonFinite` stops a run whose loss or weights become NaN or infinite. Both
only read; no RNG is touched, so runs with and without them are identical.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from saeseeds.errors import DataError
from saeseeds.training.batch_order import fraction_step
from saeseeds.training.metrics import evaluate_heldout

CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
VALIDATION_METRICS = ("fvu", "explained_variance", "l0", "dead_fraction")  # logged as val/<name>
DIVERGED_HINT = (
    "Lower sae.lr, or check the activations for NaN/inf values and their scale "
    "(sae.normalize=scalar rescales them)."
)


class Diverged(DataError):
    """The training loss or the SAE's weights became NaN or infinite."""


class HeldoutCurve(Callback):
    """Held-out metrics at fixed fractions of training, for each SAE the module trains
    (``module.trained_saes``): logged as ``val/<name>`` (``seed=S/val/<name>`` in a job writing
    several seeds' folders) at the step Lightning logs that batch's values under, and the FVU kept
    as the SAE's curve; checkpointed, so a resumed run keeps it. It is the only held-out pass
    during training (there is no Lightning validation loop: a second one over the same rows would
    measure the same thing)."""

    def __init__(self, heldout: Tensor, batch_size: int):
        self.heldout, self.batch_size = heldout, batch_size
        self.curves: list[dict[str, float]] = []  # per SAE: "0.25" -> held-out FVU
        self._next_due: float | None = None  # the next step with a point to take (None: unknown)

    @property
    def points(self) -> dict[str, float]:
        """The curve of the first (for a one-SAE module, the only) SAE."""
        return self.curves[0] if self.curves else {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        step = trainer.global_step
        if self._next_due is not None and step < self._next_due:
            return  # nothing due: every other step returns here
        saes = module.trained_saes
        self.curves.extend({} for _ in range(len(saes) - len(self.curves)))
        reached, due = [], []  # keys of the points taken now; steps of the points to come
        for fraction in CURVE_FRACTIONS:
            key, at = f"{fraction:g}", fraction_step(fraction, module.total_steps)
            if key in self.curves[0]:
                continue
            if step < at:
                due.append(at)
            else:
                reached.append(key)
        self._next_due = min(due) if due else math.inf
        if not reached:
            return
        measured = [self._evaluate(sae, module.input_scale) for sae in saes]
        for metrics, points in zip(measured, self.curves, strict=False):
            points.update({key: metrics["fvu"] for key in reached})
        self._log(trainer, module, measured)

    @torch.no_grad()
    def _evaluate(self, sae: Any, input_scale: float) -> dict[str, float]:
        was_training = sae.training
        sae.eval()
        try:
            # These metrics do not depend on the input scale; the training-scale SAE sees the
            # held-out rows in training units, as it saw its batches.
            metrics, _, _ = evaluate_heldout(sae, self.heldout * input_scale, self.batch_size)
        finally:
            sae.train(was_training)
        return metrics

    @staticmethod
    def _log(trainer: L.Trainer, module: Any, measured: list[dict[str, float]]) -> None:
        if not trainer.loggers:
            return
        values: dict[str, float] = {"epoch": trainer.current_epoch}
        for index, metrics in enumerate(measured):
            prefix = module.log_prefix(index)
            values.update({f"{prefix}val/{name}": metrics[name] for name in VALIDATION_METRICS})
        # The step Lightning logs this batch's own values under (one behind global_step).
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"points": dict(self.points), "curves": [dict(curve) for curve in self.curves]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        curves = state_dict.get("curves")
        if curves is None:  # a checkpoint written before several SAEs per module
            curves = [state_dict.get("points", {})]
        self.curves = [dict(curve) for curve in curves]
        self._next_due = None


class StopOnNonFinite(Callback):
    """Stops training with :class:`Diverged` once the loss or the weights are NaN or infinite, so
    such a run never writes a checkpoint past the last finite step, nor weights, nor COMPLETE.

    It sees the losses of each block of steps (one per step) when the block ends. On the CPU
    they are checked there (free). On an accelerator a check is a host sync, so each block only
    folds its losses into a flag kept on the device, and the flag is read every
    ``trainer.log_every_n_steps`` steps (when Lightning logs, and syncs, anyway), before every
    checkpoint and at the end; the weights are checked before every checkpoint and at the end.
    """

    def __init__(self) -> None:
        self._finite: Tensor | None = None  # all losses since the last check were finite
        self._since = 0  # the first step folded into the flag

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        finite = torch.isfinite(loss.detach()).all()
        if self._finite is None:  # the loss of each step of the block just taken
            self._finite, self._since = finite, trainer.global_step - loss.numel() + 1
        else:
            self._finite = self._finite & finite
        every = max(1, int(trainer.log_every_n_steps or 1))
        if loss.device.type == "cpu" or trainer.global_step % every == 0:
            self._check_loss(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, module: Any, checkpoint: Any) -> None:
        self._check_loss(trainer)
        self._check_weights(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self._check_loss(trainer)
        self._check_weights(trainer, module)

    def _check_loss(self, trainer: L.Trainer) -> None:
        finite, self._finite = self._finite, None
        if finite is not None and not bool(finite):
            steps = f"step {trainer.global_step}"
            if trainer.global_step > self._since:
                steps = f"steps {self._since} to {trainer.global_step}"
            raise Diverged(
                f"the training loss became NaN or infinite (in {steps}): the SAE diverged, so no "
                f"checkpoint, weights or COMPLETE were written past it. {DIVERGED_HINT}"
            )

    def _check_weights(self, trainer: L.Trainer, module: Any) -> None:
        # A job writing several seeds' folders names its SAEs by seed.
        seeds = module.seeds if getattr(module, "prefixed", False) else None
        for index, sae in enumerate(module.trained_saes):
            for name, weight in sae.named_parameters():
                if not bool(torch.isfinite(weight.detach()).all()):
                    which = f"seed {seeds[index]}'s " if seeds else "the SAE's "
                    raise Diverged(
                        f"{which}{name} became NaN or infinite by step {trainer.global_step}: the "
                        f"SAE diverged, so no checkpoint, weights or COMPLETE were written past "
                        f"it. {DIVERGED_HINT}"
                    )
