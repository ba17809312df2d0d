"""Recovery of a known ground-truth dictionary by an SAE's decoder, and feature absorption.

Pure tensor functions (torch only, nothing of the project), so the trainer (``metrics.json``) and
any reader of run folders share one implementation. Definitions (docs/synthetic.md):

- A true feature is **recovered** when some decoder row has cosine ≥ ``RECOVERY_THRESHOLD`` (0.9)
  with its direction.
- In a hierarchy, a child c of parent p is **absorbed** when it is not recovered and one decoder
  row carries c together with p: its cosine with the unit vector along p + c (the sum of their
  directions: how the two look in an input where both fire, at the magnitudes' common mean) is
  ≥ ``ABSORPTION_THRESHOLD`` (0.9). That is feature absorption as Chanin et al. (2024, "A is for
  Absorption") and Bussmann et al. (2025, Matryoshka SAEs) describe it in their toy models: the
  SAE spends one latent on "parent and this child" instead of one on the child alone, so no
  latent stands for the child and the parent's direction is split between latents.

It does not read files and knows nothing of SAEs beyond a decoder matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

RECOVERY_THRESHOLD = 0.9
ABSORPTION_THRESHOLD = 0.9
# Tensor names in ground_truth.safetensors.
DIRECTIONS_TENSOR = "true_directions"
PARENT_TENSOR = "parent"


@dataclass(frozen=True)
class GroundTruth:
    """A synthetic world's dictionary and, with a hierarchy, each feature's parent."""

    directions: Tensor  # [n_true_features, d_in], unit rows
    parents: Tensor | None = None  # [n_true_features] int64: the parent's index, -1 for none

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> GroundTruth:
        """From the tensors of a ground_truth.safetensors file."""
        return cls(tensors[DIRECTIONS_TENSOR].float(), tensors.get(PARENT_TENSOR))


def unit_rows(matrix: Tensor) -> Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def best_cosines(targets: Tensor, decoder: Tensor) -> Tensor:  # [n_targets]
    """Each target direction's highest cosine with any decoder row (rows of both normalised)."""
    return (unit_rows(targets.float()) @ unit_rows(decoder.float()).T).max(dim=1).values


def ground_truth_metrics(decoder: Tensor, truth: GroundTruth) -> dict[str, float | int]:
    """Recovery (and, with a hierarchy, absorption) of ``truth`` by ``decoder`` [n_features,
    d_in]. Keys: ``gt_recovered`` (share of true features), and with a hierarchy
    ``gt_parents_recovered``, ``gt_children_recovered`` (shares), ``gt_absorbed_children``
    (count) and ``gt_absorbed_children_share``."""
    recovered = best_cosines(truth.directions, decoder) >= RECOVERY_THRESHOLD  # [n_true]
    metrics: dict[str, float | int] = {"gt_recovered": float(recovered.float().mean())}
    if truth.parents is None or not bool((truth.parents >= 0).any()):
        return metrics
    parents = truth.parents.long()
    children = torch.nonzero(parents >= 0).squeeze(1)  # [n_children]
    parent_ids = torch.unique(parents[children])
    merged = truth.directions[children] + truth.directions[parents[children]]  # [n_children, d_in]
    carried = best_cosines(merged, decoder) >= ABSORPTION_THRESHOLD
    absorbed = carried & ~recovered[children]
    metrics.update(
        gt_parents_recovered=float(recovered[parent_ids].float().mean()),
        gt_children_recovered=float(recovered[children].float().mean()),
        gt_absorbed_children=int(absorbed.sum()),
        gt_absorbed_children_share=float(absorbed.float().mean()),
    )
    return metrics
