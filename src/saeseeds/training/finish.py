"""The end of a job, per seed: evaluate the trained SAE (folded into raw-activation units) on
the held-out activations (FVU, L0, dead latents, ground-truth recovery, and for text sources the
CE-loss score and top examples), write every file of the run-folder contract
(:mod:`saeseeds.training.run_folder`, ``docs/contract.md``) and mark the folder complete, last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saeseeds import contract
from saeseeds.activations.base import ActivationSource, ActivationSplits
from saeseeds.sae import SAE, build_sae
from saeseeds.training import lm_eval, run_folder
from saeseeds.training.heldout_codes import write_heldout_codes
from saeseeds.training.metrics import evaluate_ground_truth, evaluate_heldout
from saeseeds.training.snapshots import snapshot_cost

log = logging.getLogger(__name__)
TOP_EXAMPLES_PER_FEATURE = 5


@dataclass
class TrainedSAE:
    """One trained SAE (in training units) and what its training measured."""

    sae: SAE
    input_scale: float
    heldout_fvu_curve: dict[str, float]


@dataclass
class FitRecord:
    """What one ``trainer.fit`` did; shared by every SAE it trained."""

    steps: int
    device: str
    precision_choice: dict[str, Any]
    """The precision and how it was chosen (``step_precision.step_precision``)."""
    started: float  # time.time() at the start of the job
    fit_time_s: float
    seeds_trained_together: list[int] | None = None

    @property
    def precision(self) -> str:
        return self.precision_choice["precision"]


def finish_run(
    cfg: DictConfig,
    run_dir: Path,
    source: ActivationSource,
    splits: ActivationSplits,
    trained: TrainedSAE,
    fit: FitRecord,
    wandb_run: dict[str, Any] | None,
) -> dict[str, Any]:
    """Evaluate the folded SAE on raw held-out activations and write every contract file."""
    folded = trained.sae.folded_state(trained.input_scale)
    raw_sae = build_sae(trained.sae.d_in, trained.sae.config)
    raw_sae.load_folded(folded)
    raw_sae.eval()

    metrics, fire_count, activation_sum = evaluate_heldout(
        raw_sae, splits.heldout, source.batch_size
    )
    metrics.update(evaluate_ground_truth(raw_sae, source.ground_truth()))
    context = source.text_context()
    top_examples, eval_choice = None, None
    if context is not None:
        eval_choice = lm_eval.eval_precision(context).record()
        metrics.update(lm_eval.ce_loss_metrics(context, lambda x: raw_sae(x).reconstruction))
        top_examples = lm_eval.top_examples(context, raw_sae.encode, TOP_EXAMPLES_PER_FEATURE)
    metrics.update(
        heldout_fvu_curve=dict(trained.heldout_fvu_curve),
        steps=fit.steps,
        tokens_seen=fit.steps * source.batch_size,
        heldout_tokens=len(splits.heldout),
        fit_time_s=fit.fit_time_s,
        wall_time_s=round(time.time() - fit.started, 3),
    )
    metrics.update(snapshot_cost(run_dir))
    codes = cfg.trainer.heldout_codes
    metrics.update(write_heldout_codes(run_dir, raw_sae, splits.heldout, source.batch_size, codes))

    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_folder.write_weights(run_dir, folded)
    run_folder.write_feature_stats(run_dir, fire_count, activation_sum, len(splits.heldout))
    run_folder.write_json(
        run_dir,
        contract.CFG_FILE,
        run_folder.sae_cfg(trained.sae, splits.provenance, trained.input_scale, cfg.seed),
    )
    run_folder.write_metrics(run_dir, metrics)
    if top_examples is not None:
        run_folder.write_json(run_dir, contract.TOP_EXAMPLES_FILE, top_examples)
    source.write_artifacts(run_dir)
    run_folder.write_json(
        run_dir,
        contract.ENVIRONMENT_FILE,
        run_folder.environment(
            seed=cfg.seed,
            device=fit.device,
            precision=fit.precision,
            precision_choice=fit.precision_choice,
            eval_precision_choice=eval_choice,
            provenance=splits.provenance,
            resolved_config=resolved,
            wandb_run=wandb_run,
            seeds_trained_together=fit.seeds_trained_together,
        ),
    )
    run_folder.mark_complete(run_dir)
    return metrics


def log_complete(run_dir: Path, metrics: dict[str, Any]) -> None:
    log.info(
        "Run complete: %s (held-out FVU %.4f, L0 %.1f, dead %.1f%%)",
        run_dir,
        metrics["fvu"],
        metrics["l0"],
        100 * metrics["dead_fraction"],
    )
