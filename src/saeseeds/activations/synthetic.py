"""Synthetic activations from a known ground-truth dictionary, optionally with a feature hierarchy.

Each sample is a sparse non-negative combination of unit directions plus isotropic noise: a
uniformly random set of ``k_true`` features fires, each with a magnitude uniform in
[min_magnitude, max_magnitude]. With a hierarchy (``data.hierarchy``), features 0..P-1 are
parents and the next P·C are their children (child j of parent p is feature P + p·C + j); children
are never drawn in the k_true set: each parent that fires brings, with probability
``child_probability``, exactly one of its C children (uniformly chosen, its own uniform magnitude),
so a child fires only with its parent, as in the synthetic absorption benchmarks (Chanin et al.
2024; Bussmann et al. 2025). The remaining features are free. Without a hierarchy the samples are
the same as before it existed, bit for bit.

Two samplers draw the same distribution. The default (``data.sampler=null``, the only one before
``sparse`` existed) gives every row a uniform score per drawable feature, takes the top k_true,
and multiplies the dense [rows, n_true_features] codes with the dictionary: its time and memory
grow with rows × n_true_features (about 16 GB and close to a minute per 65,536-row shard at
32,768 true features on 2 cores), and its samples are those of every synthetic run so far, bit
for bit.
``data.sampler=sparse`` draws k_true indices per row (rows with a repeat are drawn again, which
leaves a uniformly random k-subset) and sums those rows of the dictionary (``embedding_bag``):
time and memory grow with rows × k_true × d_in. Its random stream differs, so its samples are
another world of the same law, and it is part of the data identity. (With k_true(k_true-1) >
2·drawable features it draws the ids as the default does, and its samples then differ from the
default's by rounding only.)

The dictionary depends only on ``data_seed``; training shard i is drawn from (data_seed, "train", i)
and the held-out rows from (data_seed, "heldout"), so every SAE seed of a sweep sees the same data,
any token count is generated in bounded memory, and a smaller budget trains on a prefix of a
larger one's rows. The ground truth (and each feature's parent) is saved so recovery and
absorption can be measured (:mod:`saeseeds.ground_truth`). It knows nothing of SAEs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, check_token_budget
from saeseeds.activations.shards import GeneratedShards, TrainingRows, seeded_generator
from saeseeds.contract import GROUND_TRUTH_FILE
from saeseeds.errors import DataError
from saeseeds.ground_truth import DIRECTIONS_TENSOR, PARENT_TENSOR, GroundTruth
from saeseeds.io import atomic_save_safetensors

# data.sampler: null, the dense draw of every synthetic run so far, or "sparse".
SAMPLERS = (None, "sparse")


@dataclass(frozen=True)
class Hierarchy:
    """P parents (features 0..P-1), each with C children (features P..P+P·C-1); a firing parent
    brings exactly one of its children with probability ``child_probability``."""

    n_parents: int
    children_per_parent: int
    child_probability: float

    @property
    def n_children(self) -> int:
        return self.n_parents * self.children_per_parent

    def parents(self, n_true_features: int) -> Tensor:  # [n_true_features] int64, -1: none
        parent = torch.full((n_true_features,), -1, dtype=torch.int64)
        children = torch.arange(self.n_children) + self.n_parents
        parent[children] = torch.arange(self.n_parents).repeat_interleave(self.children_per_parent)
        return parent

    def describe(self) -> dict[str, Any]:
        return {
            "n_parents": self.n_parents,
            "children_per_parent": self.children_per_parent,
            "child_probability": self.child_probability,
        }


def hierarchy_from_config(
    config: Mapping[str, Any] | None, n_true_features: int, k_true: int
) -> Hierarchy | None:
    """The ``data.hierarchy`` block, checked; ``None`` when it is off (absent, or n_parents=0)."""
    if config is None or int(config["n_parents"]) == 0:
        return None
    hierarchy = Hierarchy(
        int(config["n_parents"]),
        int(config["children_per_parent"]),
        float(config["child_probability"]),
    )
    if hierarchy.n_parents < 1 or hierarchy.children_per_parent < 1:
        raise DataError(
            f"data.hierarchy.n_parents={hierarchy.n_parents} and "
            f"data.hierarchy.children_per_parent={hierarchy.children_per_parent} must be at "
            "least 1 (data.hierarchy.n_parents=0: no hierarchy)."
        )
    if not 0 <= hierarchy.child_probability <= 1:
        raise DataError(
            f"data.hierarchy.child_probability={hierarchy.child_probability} must be in [0, 1]."
        )
    if hierarchy.n_parents + hierarchy.n_children > n_true_features:
        raise DataError(
            f"data.hierarchy: {hierarchy.n_parents} parents with "
            f"{hierarchy.children_per_parent} children each need "
            f"{hierarchy.n_parents + hierarchy.n_children} features, more than "
            f"data.n_true_features={n_true_features}."
        )
    if k_true > n_true_features - hierarchy.n_children:
        raise DataError(
            f"data.k_true={k_true} must be at most the {n_true_features - hierarchy.n_children} "
            "features that are not children (children fire only with their parent)."
        )
    return hierarchy


class SyntheticSource(ActivationSource):
    def __init__(
        self,
        d_in: int,
        n_true_features: int,
        k_true: int,
        noise_std: float,
        min_magnitude: float,
        max_magnitude: float,
        n_tokens: int,
        heldout_tokens: int,
        batch_size: int,
        data_seed: int,
        spectrum_decay: float = 0.0,
        shard_tokens: int = 65_536,
        hierarchy: Mapping[str, Any] | None = None,
        sampler: str | None = None,
    ):
        if d_in <= 0 or n_true_features <= 0:
            raise DataError(
                f"data.d_in={d_in} and data.n_true_features={n_true_features} must be positive."
            )
        if not 0 < k_true <= n_true_features:
            raise DataError(
                f"data.k_true={k_true} must be in [1, data.n_true_features={n_true_features}]."
            )
        if not noise_std >= 0:  # also refuses NaN
            raise DataError(
                f"data.noise_std={noise_std} is not valid; the noise's standard deviation must "
                "be >= 0 (0: no noise)."
            )
        if not 0 <= min_magnitude <= max_magnitude:
            raise DataError(
                f"Need 0 <= data.min_magnitude <= data.max_magnitude, "
                f"got {min_magnitude} and {max_magnitude}."
            )
        if heldout_tokens < 1:
            raise DataError(f"data.heldout_tokens={heldout_tokens} must be at least 1.")
        check_token_budget(n_tokens, batch_size, "data=synthetic")
        if sampler not in SAMPLERS:
            raise DataError(
                f"data.sampler={sampler!r} is not valid; use null (the dense sampler of every "
                "synthetic run so far) or sparse (cost independent of data.n_true_features)."
            )
        self.sampler = sampler
        self.d_in, self.n_true_features, self.k_true = d_in, n_true_features, k_true
        self.noise_std = noise_std
        self.min_magnitude, self.max_magnitude = min_magnitude, max_magnitude
        self.n_tokens, self.batch_size = n_tokens, batch_size
        self.n_heldout, self.shard_tokens = heldout_tokens, shard_tokens
        if spectrum_decay < 0:
            raise DataError(f"data.spectrum_decay={spectrum_decay} must be >= 0.")
        self.spectrum_decay = spectrum_decay
        self.data_seed = data_seed
        self.hierarchy = hierarchy_from_config(hierarchy, n_true_features, k_true)
        self.true_directions = self._sample_directions()  # [n_true_features, d_in]

    def _sample_directions(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.data_seed)
        directions = torch.randn(self.n_true_features, self.d_in, generator=generator)
        if self.spectrum_decay > 0:
            scales = torch.exp(-self.spectrum_decay * torch.arange(self.d_in) / self.d_in)
            directions = directions * scales
        return directions / directions.norm(dim=1, keepdim=True)

    def sample(self, n_samples: int, generator: torch.Generator) -> Tensor:  # [n_samples, d_in]
        hierarchy = self.hierarchy
        drawable = self.n_true_features - (hierarchy.n_children if hierarchy else 0)
        active = self._active(n_samples, drawable, generator)  # [n_samples, k_true]
        magnitudes = self._magnitudes((n_samples, self.k_true), generator)
        if hierarchy is not None:  # skip the children's block of feature ids
            active = torch.where(
                active < hierarchy.n_parents, active, active + hierarchy.n_children
            )
        children = self._children(active, hierarchy, generator) if hierarchy else None
        if self.sampler == "sparse":
            clean = self._sparse_sum(active, magnitudes, children)
        else:
            codes = torch.zeros(n_samples, self.n_true_features).scatter_(1, active, magnitudes)
            if children is not None:
                fires, child, child_magnitudes = children
                rows = torch.arange(n_samples).unsqueeze(1).expand_as(active)[fires]
                codes[rows, child[fires]] = child_magnitudes[fires]
            clean = codes @ self.true_directions
        noise = self.noise_std * torch.randn(n_samples, self.d_in, generator=generator)
        return clean + noise

    def _active(self, n_samples: int, drawable: int, generator: torch.Generator) -> Tensor:
        """[n_samples, k_true] distinct feature ids per row, each row a uniformly random k-subset
        of range(drawable). The default sampler takes each row's top k of uniform scores. The
        sparse one draws k i.i.d. uniform ids, again for the rows with a repeat (all ordered
        k-tuples without repeats are equally likely, so every k-subset is; a row is accepted
        with probability about exp(-k(k-1)/2·drawable), at least 1/e here); where a repeat is
        likelier (k_true(k_true-1) > 2·drawable) it takes the default's draw."""
        k = self.k_true
        if self.sampler is None or k * (k - 1) > 2 * drawable:
            return torch.rand(n_samples, drawable, generator=generator).topk(k, dim=1).indices
        active = torch.randint(drawable, (n_samples, k), generator=generator)
        while True:
            ordered = active.sort(dim=1).values
            repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero().squeeze(1)
            if len(repeats) == 0:
                return active
            active[repeats] = torch.randint(drawable, (len(repeats), k), generator=generator)

    def _sparse_sum(
        self, active: Tensor, magnitudes: Tensor, children: tuple[Tensor, Tensor, Tensor] | None
    ) -> Tensor:
        """Σ magnitude · direction over each row's active features (and children), from the
        dictionary's rows alone: [rows, d_in]."""
        if children is not None:  # a child that does not fire weighs 0
            fires, child, child_magnitudes = children
            active = torch.cat([active, torch.where(fires, child, 0)], dim=1)
            magnitudes = torch.cat([magnitudes, child_magnitudes * fires], dim=1)
        return F.embedding_bag(
            active, self.true_directions, per_sample_weights=magnitudes, mode="sum"
        )

    def _magnitudes(self, shape: tuple[int, int], generator: torch.Generator) -> Tensor:
        span = self.max_magnitude - self.min_magnitude
        return self.min_magnitude + span * torch.rand(shape, generator=generator)

    def _children(
        self, active: Tensor, hierarchy: Hierarchy, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each active parent brings one uniformly chosen child with child_probability: whether
        entry [row, j] of ``active`` brings one, its child's id and magnitude ([n, k_true] each;
        the id and magnitude mean nothing where it brings none)."""
        brings = torch.rand(active.shape, generator=generator) < hierarchy.child_probability
        which = torch.randint(hierarchy.children_per_parent, active.shape, generator=generator)
        magnitudes = self._magnitudes(tuple(active.shape), generator)
        fires = brings & (active < hierarchy.n_parents)  # [n_samples, k_true]
        child = hierarchy.n_parents + active * hierarchy.children_per_parent + which
        return fires, child, magnitudes

    def train_shard(self, index: int, rows: int) -> Tensor:
        return self.sample(rows, seeded_generator(self.data_seed, "train", index))

    def heldout(self) -> Tensor:
        return self.sample(self.n_heldout, seeded_generator(self.data_seed, "heldout"))

    def load(self) -> ActivationSplits:
        shards = GeneratedShards(
            self.train_shard, self.d_in, self.shard_tokens, torch.float32, "synthetic data"
        )
        return ActivationSplits(
            train=TrainingRows(shards, self.n_tokens),
            heldout=self.heldout(),
            provenance=self.provenance(),
        )

    def provenance(self) -> dict[str, Any]:
        world = {
            "data_seed": self.data_seed,
            "d_in": self.d_in,
            "n_true_features": self.n_true_features,
            "k_true": self.k_true,
            "noise_std": self.noise_std,
            "min_magnitude": self.min_magnitude,
            "max_magnitude": self.max_magnitude,
            "spectrum_decay": self.spectrum_decay,
        }
        if self.hierarchy is not None:  # absent without one: earlier identities stay valid
            world["hierarchy"] = self.hierarchy.describe()
        if self.sampler is not None:  # likewise
            world["sampler"] = self.sampler
        identity = {
            "kind": "synthetic",
            **world,
            "shard_tokens": self.shard_tokens,
            "heldout_tokens": self.n_heldout,
            "n_train_tokens": self.n_tokens,
        }
        return {
            "source": "synthetic",
            "model_name": "synthetic",
            "hook_name": "synthetic",
            "dtype": "float32",
            **world,
            "data_identity": identity,
        }

    def ground_truth(self) -> GroundTruth:
        parents = self.hierarchy.parents(self.n_true_features) if self.hierarchy else None
        return GroundTruth(self.true_directions, parents)

    def write_artifacts(self, run_dir: Path) -> None:
        tensors = {DIRECTIONS_TENSOR: self.true_directions}
        metadata = {"k_true": str(self.k_true)}
        if self.hierarchy is not None:
            tensors[PARENT_TENSOR] = self.hierarchy.parents(self.n_true_features)
            metadata.update({key: str(value) for key, value in self.hierarchy.describe().items()})
        atomic_save_safetensors(Path(run_dir) / GROUND_TRUTH_FILE, tensors, metadata=metadata)
