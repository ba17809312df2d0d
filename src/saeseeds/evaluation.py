"""Held-out evaluation of a trained SAE on raw activations: FVU, MSE, L0, per-feature firing.

Metrics are accumulated as exact sums over batches, so they do not depend on the batch size.
It does not train and does not write files.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeseeds.sae import TopKSAE


def reconstruction_totals(x: Tensor, reconstruction: Tensor, latent_values: Tensor) -> dict:
    """Sums over a batch from which held-out metrics are computed exactly over many batches."""
    x, reconstruction = x.double(), reconstruction.double()
    return {
        "n": torch.tensor(x.shape[0], dtype=torch.float64, device=x.device),
        "squared_error": (x - reconstruction).pow(2).sum(),
        "sum_x": x.sum(0),  # [d_in]
        "sum_x_squared": x.pow(2).sum(),
        "active": (latent_values > 0).sum().double(),
    }


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
    sae: TopKSAE, heldout: Tensor, batch_size: int
) -> tuple[dict[str, float], Tensor, Tensor]:
    """Metrics plus ``fire_count`` (int64) and ``activation_sum`` (float32) per feature."""
    totals: dict = {}
    fire_count = torch.zeros(sae.n_features, dtype=torch.long)
    activation_sum = torch.zeros(sae.n_features, dtype=torch.float64)
    device = sae.W_dec.device
    for start in range(0, len(heldout), batch_size):
        x = heldout[start : start + batch_size].to(device).float()  # [batch, d_in]
        output = sae(x)
        for name, value in reconstruction_totals(
            x, output.reconstruction, output.latent_values
        ).items():
            totals[name] = totals.get(name, 0) + value.cpu()
        fired = output.latent_values > 0
        indices = output.latent_indices[fired].cpu()
        fire_count += torch.bincount(indices, minlength=sae.n_features)
        activation_sum.index_add_(0, indices, output.latent_values[fired].double().cpu())
    totals["fire_count"] = fire_count
    return summarise_totals(totals), fire_count, activation_sum.float()
