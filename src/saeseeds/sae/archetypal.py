"""The relaxed archetypal SAE (RA-SAE) of Fel et al. (2025), "Archetypal SAE: Adaptive and
Stable Dictionary Learning for Concept Extraction in Large Vision Models".

A Top-K SAE (:mod:`saeseeds.sae.topk`: encoder, Top-K selection, AuxK and the fused training
forward are that module's, unchanged; the RA-SAE of the paper is a Top-K SAE too) whose decoder
rows are tied to the data. Row i is

    D_i = s · (Σ_j A_ij C_j + Λ_i),   A_i in the probability simplex,   ‖Λ_i‖ ≤ δ·r,

a convex combination of fixed anchor points C_j taken from the training activations, plus a
relaxation Λ_i of bounded norm, times one learned scale s = exp(log_scale) > 0 (the reference
implementation's "multiplier", which puts the rows in the cone of the hull). r is the RMS norm
of the anchors, so ``relaxation`` (δ) is relative to them.

- **Anchors**: ``n_anchors`` (default n_features) k-means centroids of the initialisation sample
  (``sae.init_sample_size`` activations), by Lloyd's algorithm from k-means++ seeds drawn with
  the seed. The sample is first centred on b_dec (its geometric median):
  the decoder reconstructs x − b_dec, so the hull is taken in that space (uncentred, every row
  would carry the mean activation). Every seed draws its own sample and so its own anchors.
- **Constraint**, after each optimiser step, as the reference implementation does it: A ←
  ReLU(A) with each row rescaled to sum 1 (a row left all zero becomes uniform), and each Λ_i
  rescaled to norm δ·r when longer.
- **Initialisation**: A = identity (row i is anchor i, hence n_anchors ≥ n_features), Λ = 0,
  s = 1/r (rows of RMS norm 1); encoder columns are the rows' unit directions, b_enc = 0.

``W_dec`` is a buffer holding the effective decoder D, recomputed after every step: training
reads D with its gradient (:meth:`trained_decoder`), everything else reads ``W_dec`` like any
architecture's. So the saved ``W_dec`` is the effective decoder (normalisation folded), latents
follow the Top-K rule, and no extra tensor is saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saeseeds.errors import ConfigError
from saeseeds.sae.configs import ArchetypalConfig
from saeseeds.sae.kernels import geometric_median
from saeseeds.sae.topk import TopKSAE

KMEANS_ITERATIONS = 10  # Lloyd iterations after k-means++ seeding; anchors need no more precision
KMEANS_CHUNK_ROWS = 4096  # sample rows per distance block: bounds memory to chunk·n_anchors


@torch.no_grad()
def nearest_centroid(points: Tensor, centroids: Tensor) -> Tensor:  # [n_points]
    """Index of each point's nearest centroid (squared Euclidean), in bounded blocks."""
    centroid_norms = centroids.pow(2).sum(1)
    parts = []
    for start in range(0, len(points), KMEANS_CHUNK_ROWS):
        block = points[start : start + KMEANS_CHUNK_ROWS]
        parts.append((centroid_norms - 2 * block @ centroids.T).argmin(1))
    return torch.cat(parts)


@torch.no_grad()
def kmeans_plus_plus(points: Tensor, n_centroids: int, generator: torch.Generator) -> Tensor:
    """Arthur & Vassilvitskii's seeding: each next centroid is a sample point drawn with
    probability proportional to its squared distance from the nearest centroid so far."""
    norms = points.pow(2).sum(1)  # ‖p − c‖² = ‖p‖² − 2 p·c + ‖c‖²: one pass over the points

    def squared_distances(index: int) -> Tensor:  # [n_points]
        return (norms - 2 * (points @ points[index]) + norms[index]).clamp_min_(0.0)

    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    squared = squared_distances(chosen[0])
    for _ in range(1, n_centroids):
        weights = squared if float(squared.sum()) > 0 else torch.ones_like(squared)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        squared = torch.minimum(squared, squared_distances(chosen[-1]))
    return points[chosen].clone()


@torch.no_grad()
def kmeans(points: Tensor, n_centroids: int, generator: torch.Generator) -> Tensor:
    """Lloyd's algorithm from k-means++ seeds drawn with ``generator``; an emptied cluster keeps
    its last centroid. Returns [n_centroids, d]."""
    centroids = kmeans_plus_plus(points, n_centroids, generator)
    assignment = None
    for _ in range(KMEANS_ITERATIONS):
        updated = nearest_centroid(points, centroids)
        if assignment is not None and torch.equal(updated, assignment):
            break
        assignment = updated
        counts = torch.bincount(assignment, minlength=n_centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class ArchetypalSAE(TopKSAE):
    architecture = "archetypal"
    Config = ArchetypalConfig
    config: ArchetypalConfig

    def __init__(self, d_in: int, config: ArchetypalConfig, fused_encoder: bool | None = None):
        super().__init__(d_in, config, fused_encoder)
        n_anchors = config.anchor_count
        del self.W_dec  # the effective decoder is derived, so a buffer, not a parameter
        self.register_buffer("W_dec", torch.zeros(self.n_features, d_in))
        self.register_buffer("anchors", torch.zeros(n_anchors, d_in))  # C
        self.register_buffer("relaxation_bound", torch.zeros(()))  # δ·r
        self.anchor_weights = nn.Parameter(torch.zeros(self.n_features, n_anchors))  # A
        self.relaxation = nn.Parameter(torch.zeros(self.n_features, d_in))  # Λ
        self.log_scale = nn.Parameter(torch.zeros(()))  # log s

    @torch.no_grad()
    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        sample = activation_sample.float()
        n_anchors = self.config.anchor_count
        if len(sample) < n_anchors:
            raise ConfigError(
                f"sae=archetypal needs at least {n_anchors} activations to cluster into "
                f"{n_anchors} anchors (sae.n_anchors, default sae.n_features); the training "
                f"split gave {len(sample)}. Use more tokens or fewer anchors."
            )
        self.b_dec.copy_(geometric_median(sample))
        self.anchors.copy_(kmeans(sample - self.b_dec, n_anchors, generator))
        anchor_rms = self.anchors.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        self.relaxation_bound.fill_(self.config.relaxation * float(anchor_rms))
        self.anchor_weights.copy_(torch.eye(self.n_features, n_anchors))
        self.relaxation.zero_()
        self.log_scale.fill_(-float(anchor_rms.log()))
        self.W_dec.copy_(self.effective_decoder())
        self.W_enc.copy_((self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)).T)
        self.b_enc.zero_()

    def effective_decoder(self) -> Tensor:  # [n_features, d_in]
        """D = s · (A C + Λ), differentiable in A, Λ and s."""
        return self.log_scale.exp() * (self.anchor_weights @ self.anchors + self.relaxation)

    def trained_decoder(self) -> Tensor:
        return self.effective_decoder() if self.training else self.W_dec

    def cfg_fields(self) -> dict[str, Any]:
        return {"k": self.k, "n_anchors": self.config.anchor_count}

    def before_optimizer_step(self) -> None:
        """No unit-norm constraint: the rows' norms come from the anchors."""

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        weights = self.anchor_weights.clamp_min_(0.0)
        sums = weights.sum(1, keepdim=True)
        weights.copy_(torch.where(sums > 0, weights / sums, 1.0 / weights.shape[1]))
        norms = self.relaxation.norm(dim=1, keepdim=True)
        self.relaxation.mul_((self.relaxation_bound / norms.clamp_min(1e-12)).clamp(max=1.0))
        self.W_dec.copy_(self.effective_decoder())
