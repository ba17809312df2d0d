"""The LightningModule that trains the SAEs of a job, of any architecture: the loss (the sum of
each SAE's named terms), optimiser, schedule, the decoder constraint around each step,
dead-latent tracking and logged metrics. A job trains S >= 1 seeds in lockstep on the same
batches, each exactly as it would be trained alone (one Adam parameter group, one gradient clip,
one dead-latent tracker per SAE), so one seed is simply S = 1. The maths of each architecture is
in :mod:`saeseeds.sae`; data and files are elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from saeseeds.sae import SAE


def lr_factor_schedule(
    total_steps: int, warmup_steps: int, decay_start_fraction: float
) -> Callable[[int], float]:
    """Linear warm-up (at most 10% of training), constant, then linear decay to zero."""
    warmup = min(warmup_steps, total_steps // 10)
    decay_start = int(total_steps * decay_start_fraction)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if step < decay_start:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))

    return lr_factor


def sae_step(
    sae: SAE,
    x: Tensor,
    tokens_since_fired: Tensor,
    dead_tokens_threshold: int,
    with_metrics: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One SAE's training loss on ``x`` and (``with_metrics``) its step metrics; updates its
    dead-latent tracker (``tokens_since_fired``, [n_features], in place)."""
    dead_mask = tokens_since_fired >= dead_tokens_threshold
    output = sae(x, dead_mask)
    losses = {**output.losses, **sae.weight_penalty()}  # the penalty, if any, for every SAE
    loss = sum(losses.values())
    update_dead_tracker(tokens_since_fired, output.latent_indices, output.latent_values, len(x))
    if not with_metrics:
        return loss, {}
    metrics = {
        "train/loss": loss,
        **{f"train/{name}": term for name, term in losses.items()},
        "train/fvu": output.fvu,
        "train/l0": (output.latent_values > 0).sum(-1).float().mean(),
        "train/dead_fraction": dead_mask.float().mean(),
    }
    return loss, metrics


@torch.no_grad()
def update_dead_tracker(
    tokens_since_fired: Tensor, indices: Tensor, values: Tensor, n_tokens: int
) -> None:
    # Counted with index_add_ rather than marked through indices[values > 0]: the boolean
    # selection (a nonzero) costs as much as a small SAE's whole step on the CPU.
    hits = torch.zeros(tokens_since_fired.shape, dtype=values.dtype, device=values.device)
    hits.index_add_(0, indices.reshape(-1), (values > 0).to(values.dtype).reshape(-1))
    fired = hits > 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # DDP: each process saw one shard of the batch; a latent fired if it fired in any.
        fired_anywhere = fired.to(torch.int32)
        torch.distributed.all_reduce(fired_anywhere, op=torch.distributed.ReduceOp.MAX)
        fired = fired_anywhere.bool()
        n_tokens *= torch.distributed.get_world_size()
    tokens_since_fired += n_tokens
    tokens_since_fired.masked_fill_(fired, 0)


class SAETrainingModule(L.LightningModule):
    """Trains the SAEs of ``seeds`` on the same batches. The loss is the sum of their losses, so
    each SAE's gradient is exactly its own; clipping, the constraint, the Adam update and the
    dead-latent tracker are per SAE. With ``prefixed`` (a job writing several seeds' folders)
    metrics are logged as ``seed=S/<name>`` (:class:`saeseeds.training.loggers.SeedLogger` hands
    each seed's to its own logger); otherwise as ``<name>``.

    Step metrics are computed and logged only at the steps Lightning writes its logs
    (``trainer.log_every_n_steps``): a value logged at any other step is thrown away, and the
    logging itself costs as much as a small SAE's step."""

    def __init__(
        self,
        saes: Sequence[SAE],
        seeds: Sequence[int],
        lr: float,
        input_scale: float,
        warmup_steps: int = 100,
        decay_start_fraction: float = 0.8,
        dead_tokens_threshold: int = 20_000,
        prefixed: bool = False,
    ):
        super().__init__()
        self.saes = nn.ModuleList(saes)
        self.seeds = [int(seed) for seed in seeds]
        self.prefixed = prefixed
        self.lr = lr
        self.warmup_steps, self.decay_start_fraction = warmup_steps, decay_start_fraction
        self.dead_tokens_threshold = dead_tokens_threshold
        self.input_scale = input_scale
        self.total_steps = 1  # set in configure_optimizers, once the trainer knows the data
        # [n_seeds, n_features]: tokens since each latent of each SAE last fired; a buffer, so it
        # is checkpointed for resuming.
        n_features = saes[0].n_features
        self.register_buffer(
            "tokens_since_fired", torch.zeros(len(saes), n_features, dtype=torch.long)
        )

    @property
    def trained_saes(self) -> Sequence[SAE]:
        return list(self.saes)

    def log_prefix(self, index: int) -> str:
        return seed_prefix(self.seeds[index]) if self.prefixed else ""

    def logs_this_step(self) -> bool:
        """Whether Lightning writes this training step's logged values (outside a fit: yes)."""
        trainer = self._trainer
        if trainer is None:
            return True
        return bool(trainer._logger_connector.should_update_logs)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = batch.float() * self.input_scale  # [batch, d_in]
        logs = self.logs_this_step()
        losses, fvus = [], []
        for index, sae in enumerate(self.saes):
            sae.set_progress(self.global_step, self.total_steps)
            loss, metrics = sae_step(
                sae, x, self.tokens_since_fired[index], self.dead_tokens_threshold, logs
            )
            losses.append(loss)
            if logs:
                fvus.append(metrics["train/fvu"].detach())
                lr = self.optimizers().param_groups[index]["lr"]
                prefix = self.log_prefix(index)
                logged = {f"{prefix}{name}": value for name, value in {**metrics, "lr": lr}.items()}
                self.log_dict(logged, on_step=True, on_epoch=False, prog_bar=False)
        if logs:
            self.log("fvu", torch.stack(fvus).mean(), prog_bar=True, logger=False)
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs before the gradient clipping: project, then clip (Gao et al. §A.1).
        for sae in self.saes:
            sae.before_optimizer_step()

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning would clip the norm over every parameter of the optimiser, i.e. over all
        # seeds at once; each SAE is clipped by its own norm, as it would be alone.
        if gradient_clip_val is None or gradient_clip_val <= 0:
            return
        for sae in self.saes:
            parameters = list(sae.parameters())
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        for sae in self.saes:
            sae.after_optimizer_step()

    def configure_optimizers(self):
        # One parameter group per SAE: Adam updates each group by itself, as a lone SAE's.
        groups = [{"params": list(sae.parameters())} for sae in self.saes]
        optimizer = torch.optim.Adam(groups, lr=self.lr, betas=(0.9, 0.999))
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = lr_factor_schedule(
            self.total_steps, self.warmup_steps, self.decay_start_fraction
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of a one-seed job written before every job trained a list of SAEs (``sae.*``
    and a [n_features] tracker) in today's layout (``saes.0.*``, [1, n_features]), in place."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not any(name.startswith("sae.") for name in state):
        return checkpoint
    upgraded = {}
    for name, tensor in state.items():
        if name.startswith("sae."):
            name = "saes.0." + name[len("sae.") :]
        elif name == "tokens_since_fired" and isinstance(tensor, Tensor) and tensor.dim() == 1:
            tensor = tensor.unsqueeze(0)
        upgraded[name] = tensor
    checkpoint["state_dict"] = upgraded
    return checkpoint


def seed_prefix(seed: int) -> str:
    return f"seed={seed}/"
