"""The LightningModule that trains the SAEs of a job, of any architecture: the loss (the sum of
each SAE's named terms), optimiser, schedule, the decoder constraint around each step,
dead-latent tracking and logged metrics. A job trains S >= 1 seeds in lockstep on the same
batches, each exactly as it would be trained alone (one Adam parameter group, one gradient clip,
one dead-latent tracker per SAE), so one seed is simply S = 1. The maths of each architecture is
in :mod:`saeseeds.sae`; data and files are elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from saeseeds.sae import SAE
from saeseeds.sae.kernels import total_variance

ADAM_OPTIONS = {"betas": (0.9, 0.999), "foreach": True}
"""The optimizer's options besides the learning rate. ``foreach`` is what torch already uses on
CUDA; on a CPU torch defaults to updating one tensor at a time, which makes two temporaries the
size of each parameter (fresh pages every step once a parameter passes 32 MiB, as W_enc and W_dec
do from 16,384 latents at d_in 576) where the for-each update makes one. The two run the same
arithmetic, element by element, so the weights are the same bytes."""


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
        "train/fvu": output.squared_error / total_variance(x),
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

    Each turn of Lightning's loop hands it a block of consecutive batches
    (:class:`saeseeds.training.datamodule.BlockBatches`), and it takes one optimisation step per
    batch, in the order Lightning's automatic optimisation would: forward, backward, the decoder
    constraint and gradient clipping (``on_before_optimizer_step``), the Adam step, the
    constraint's renormalisation, the learning-rate step. ``global_step`` counts optimisation
    steps, and Lightning's logging counter is kept equal to it.

    Step metrics are computed and logged only at the steps Lightning writes its logs
    (``trainer.log_every_n_steps``, where blocks end): a value logged at any other step is thrown
    away, and the logging itself costs as much as a small SAE's step."""

    def __init__(
        self,
        saes: Sequence[SAE],
        seeds: Sequence[int],
        lr: float,
        input_scale: float,
        warmup_steps: int = 100,
        decay_start_fraction: float = 0.8,
        dead_tokens_threshold: int = 20_000,
        grad_clip: float | None = None,
        prefixed: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False  # several optimisation steps per Lightning step
        self.saes = nn.ModuleList(saes)
        self.seeds = [int(seed) for seed in seeds]
        self.prefixed = prefixed
        self.lr = lr
        self.warmup_steps, self.decay_start_fraction = warmup_steps, decay_start_fraction
        self.dead_tokens_threshold = dead_tokens_threshold
        self.grad_clip = grad_clip
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
        # Lightning counts its logging steps in turns of its loop; a block is several steps.
        trainer.fit_loop.epoch_loop._batches_that_stepped = self.global_step
        return bool(trainer._logger_connector.should_update_logs)

    def training_step(self, block: Collection[Tensor], batch_idx: int) -> Tensor:
        """One optimisation step per batch of ``block``; returns their losses [steps]."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        steps, losses = len(block), []
        for position, batch in enumerate(block):  # each batch is read when it is reached
            logs = self.logs_this_step() and position == steps - 1
            loss = self._loss(batch, logs)
            optimizer.zero_grad()
            with _outside_autocast(self.device):  # as automatic optimisation runs them
                self.manual_backward(loss)
                optimizer.step()  # on_before_optimizer_step: the constraint, then clipping
                for sae in self.saes:
                    sae.after_optimizer_step()
                scheduler.step()
            # The block's steps share one autocast region. Were its cast cache on, the next
            # forward would reuse the bf16 copies of the weights from before this update (the
            # cache is dropped only when the outermost region exits); Lightning turns it off,
            # and this keeps a block of steps exact whatever the region's setting.
            torch.clear_autocast_cache()
            losses.append(loss.detach())
        return torch.stack(losses)

    def _loss(self, batch: Tensor, logs: bool) -> Tensor:
        x = batch.to(self.device).float() * self.input_scale  # [batch, d_in]
        losses, fvus, logged = [], [], {}
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
                logged.update({f"{prefix}{name}": value for name, value in metrics.items()})
                logged[f"{prefix}lr"] = lr
        if logs:
            self._log_step(logged)
            fvu = torch.stack(fvus).mean()
            self.log("fvu", fvu, prog_bar=True, logger=False, batch_size=len(x))
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum()

    def _log_step(self, metrics: dict[str, Tensor | float]) -> None:
        """This step's metrics to the loggers, as ``self.log(..., on_step=True)`` would write
        them (the same values, ``epoch`` added, at Lightning's logging step), without its
        per-value bookkeeping, which took about 1 ms a value on the CPU."""
        trainer = self._trainer
        if trainer is None or not trainer.loggers:
            return
        scalars = {name: _logged_scalar(value) for name, value in metrics.items()}
        scalars.setdefault("epoch", trainer.current_epoch)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
            logger.save()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Project, then clip (Gao et al. §A.1); each SAE is clipped by its own norm, as it
        # would be alone (Lightning's clipping would take the norm over all seeds at once).
        for sae in self.saes:
            sae.before_optimizer_step()
        if self.grad_clip is not None and self.grad_clip > 0:
            for sae in self.saes:
                torch.nn.utils.clip_grad_norm_(list(sae.parameters()), self.grad_clip)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint written before ADAM_OPTIONS holds torch's default (foreach None) in its
        # parameter groups, and loading the optimizer's state would bring it back: resume with
        # today's options instead (the same arithmetic, so the same bytes).
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group["foreach"] = ADAM_OPTIONS["foreach"]

    def configure_optimizers(self):
        # One parameter group per SAE: Adam updates each group by itself, as a lone SAE's.
        groups = [{"params": list(sae.parameters())} for sae in self.saes]
        optimizer = torch.optim.Adam(groups, lr=self.lr, **ADAM_OPTIONS)
        self.total_steps = self.trainer.datamodule.planned_steps()
        schedule = lr_factor_schedule(
            self.total_steps, self.warmup_steps, self.decay_start_fraction
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _logged_scalar(value: Tensor | float) -> float:
    """``value`` as ``self.log`` hands it to the loggers: a Python number becomes a tensor of the
    default dtype, a tensor of another dtype is converted to it, then ``.item()``."""
    tensor = value.detach() if isinstance(value, Tensor) else torch.tensor(value)
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.get_default_dtype())
    return tensor.item()


def _outside_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off, where mixed precision turned it on for the training step: automatic
    optimisation runs the backward and the optimiser step outside it."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written by an older version in today's layout, in place: the optimisation
    steps of a fit that ran one step per Lightning step (automatic optimisation) counted where
    today's module counts them; and a one-seed job's ``sae.*`` tensors and [n_features] tracker,
    from before every job trained a list of SAEs, as ``saes.0.*`` and [1, n_features]."""
    _count_steps_as_manual(checkpoint)
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


def _count_steps_as_manual(checkpoint: dict[str, Any]) -> None:
    # Lightning's global_step is the optimiser steps counted by the module's optimisation mode.
    loops = checkpoint.get("loops")
    fit_loop = loops.get("fit_loop") if isinstance(loops, dict) else None
    if not isinstance(fit_loop, dict):
        return
    automatic = fit_loop.get("epoch_loop.automatic_optimization.optim_progress")
    manual = fit_loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if not isinstance(automatic, dict) or not isinstance(manual, dict):
        return
    steps = automatic["optimizer"]["step"]
    if manual["total"]["completed"] == 0 and steps["total"]["completed"] > 0:
        for scope in ("total", "current"):
            manual[scope] = {key: steps[scope][key] for key in ("ready", "completed")}
