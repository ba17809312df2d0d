"""Evaluation of a trained SAE: held-out FVU, MSE, L0 and per-feature firing on raw activations,
and, where the data has a known ground truth, its recovery and absorption.

Held-out metrics are accumulated as exact sums over batches, so they do not depend on the batch
size. The ground-truth scores are :mod:`saeseeds.ground_truth`'s. It does not train and does not
write files.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeseeds.ground_truth import GroundTruth, ground_truth_metrics
from saeseeds.sae import SAE, SAEOutput


def batch_totals(x: Tensor, output: SAEOutput, n_features: int) -> dict[str, Tensor]:
    """Sums over one batch from which held-out metrics are computed exactly over many batches."""
    x, reconstruction = x.double(), output.reconstruction.double()
    fired = output.latent_values > 0  # [batch, k]
    indices = output.latent_indices[fired]
    return {
        "n": torch.tensor(x.shape[0], dtype=torch.float64, device=x.device),
        "squared_error": (x - reconstruction).pow(2).sum(),
        "sum_x": x.sum(0),  # [d_in]
        "sum_x_squared": x.pow(2).sum(),
        "active": fired.sum().double(),
        "fire_count": torch.bincount(indices, minlength=n_features),  # [n_features]
        "activation_sum": torch.zeros(n_features, dtype=torch.float64, device=x.device).index_add_(
            0, indices, output.latent_values[fired].double()
        ),  # [n_features]
    }


def accumulate(running: dict[str, Tensor], batch: dict[str, Tensor]) -> None:
    for name, value in batch.items():
        running[name] = running[name] + value if name in running else value


def summarise_totals(totals: dict) -> dict[str, float]:
    """FVU = Σ‖x−x̂‖² / Σ‖x−x̄‖², with Σ‖x−x̄‖² = Σ‖x‖² − ‖Σx‖²/n."""
    n = totals["n"]
    total_variance = totals["sum_x_squared"] - totals["sum_x"].pow(2).sum() / n
    fvu = float(totals["squared_error"] / total_variance.clamp_min(1e-12))
    d_in = totals["sum_x"].numel()
    metrics = {
        "mse": float(totals["squared_error"] / (n * d_in)),
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l0": float(totals["active"] / n),
    }
    if "fire_count" in totals:
        metrics["dead_fraction"] = float((totals["fire_count"] == 0).float().mean())
    return metrics


@torch.no_grad()
def evaluate_heldout(
    sae: SAE, heldout: Tensor, batch_size: int
) -> tuple[dict[str, float], Tensor, Tensor]:
    """Metrics plus ``fire_count`` (int64) and ``activation_sum`` (float32) per feature."""
    totals: dict[str, Tensor] = {}
    device = sae.W_dec.device
    for start in range(0, len(heldout), batch_size):
        x = heldout[start : start + batch_size].to(device).float()  # [batch, d_in]
        batch = batch_totals(x, sae(x), sae.n_features)
        accumulate(totals, {name: value.cpu() for name, value in batch.items()})
    return summarise_totals(totals), totals["fire_count"], totals["activation_sum"].float()


@torch.no_grad()
def evaluate_ground_truth(sae: SAE, truth: GroundTruth | None) -> dict[str, float | int]:
    """``gt_*`` metrics of the SAE's decoder against the data's ground truth; none without one."""
    return {} if truth is None else ground_truth_metrics(sae.W_dec.detach().float().cpu(), truth)
