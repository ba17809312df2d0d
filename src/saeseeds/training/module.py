"""The LightningModule that trains one SAE of any architecture: the loss (the sum of the SAE's
named terms), optimiser, schedule, the decoder constraint around each step, dead-latent tracking
and logged metrics. The maths of each architecture is in :mod:`saeseeds.sae`; data and files are
elsewhere.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from saeseeds.sae import SAE
from saeseeds.training.metrics import accumulate, batch_totals, summarise_totals


class SAETrainingModule(L.LightningModule):
    def __init__(
        self,
        sae: SAE,
        lr: float,
        input_scale: float,
        warmup_steps: int = 100,
        decay_start_fraction: float = 0.8,
        dead_tokens_threshold: int = 20_000,
    ):
        super().__init__()
        self.sae = sae
        self.lr = lr
        self.warmup_steps, self.decay_start_fraction = warmup_steps, decay_start_fraction
        self.dead_tokens_threshold = dead_tokens_threshold
        self.input_scale = input_scale
        # Tokens since each latent last fired; a buffer, so it is checkpointed for resuming.
        self.register_buffer("tokens_since_fired", torch.zeros(sae.n_features, dtype=torch.long))
        self.validation_totals: dict[str, Tensor] = {}
        self.total_steps = 1  # set in configure_optimizers, once the trainer knows the data

    # ---- training ----
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = batch.float() * self.input_scale  # [batch, d_in]
        dead_mask = self.tokens_since_fired >= self.dead_tokens_threshold
        self.sae.set_progress(self.global_step, self.total_steps)
        output = self.sae(x, dead_mask)
        loss = sum(output.losses.values())
        self._update_dead_tracker(output.latent_indices, output.latent_values, len(x))

        l0 = (output.latent_values > 0).sum(-1).float().mean()
        self.log_dict(
            {
                "train/loss": loss,
                **{f"train/{name}": term for name, term in output.losses.items()},
                "train/fvu": output.fvu,
                "train/l0": l0,
                "train/dead_fraction": dead_mask.float().mean(),
                "lr": self.optimizers().param_groups[0]["lr"],
            },
            on_step=True,
            on_epoch=False,
            prog_bar=False,
        )
        self.log("fvu", output.fvu, prog_bar=True, logger=False)
        return loss

    @torch.no_grad()
    def _update_dead_tracker(self, indices: Tensor, values: Tensor, n_tokens: int) -> None:
        fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        fired[indices[values > 0]] = True
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs before Lightning's gradient clipping: project, then clip (Gao et al. §A.1).
        self.sae.before_optimizer_step()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.sae.after_optimizer_step()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=(0.9, 0.999))
        total_steps = self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total_steps // 10)
        decay_start = int(total_steps * self.decay_start_fraction)

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if step < decay_start:
                return 1.0
            return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ---- held-out evaluation ----
    def on_validation_epoch_start(self) -> None:
        self.validation_totals = {}

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch.float() * self.input_scale
        accumulate(self.validation_totals, batch_totals(x, self.sae(x), self.sae.n_features))

    def on_validation_epoch_end(self) -> None:
        if not self.validation_totals:
            return
        metrics = summarise_totals(self.validation_totals)
        self.log_dict(
            {
                "val/fvu": metrics["fvu"],
                "val/explained_variance": metrics["explained_variance"],
                "val/l0": metrics["l0"],
                "val/dead_fraction": metrics["dead_fraction"],
            },
            prog_bar=False,
        )
