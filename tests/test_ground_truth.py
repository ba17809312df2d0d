"""Ground-truth recovery and absorption on decoders built by hand: what each definition counts."""

from __future__ import annotations

import torch

from saeseeds.ground_truth import GroundTruth, ground_truth_metrics, unit_rows

# 2 parents (0, 1), each with 2 children (2, 3 of parent 0; 4, 5 of parent 1), 2 free features;
# orthonormal, so every cosine below is exact.
DIRECTIONS = torch.eye(8)
PARENTS = torch.tensor([-1, -1, 0, 0, 1, 1, -1, -1])
TRUTH = GroundTruth(DIRECTIONS, PARENTS)


def test_a_perfect_decoder_recovers_everything_and_absorbs_nothing():
    decoder = torch.cat(
        [DIRECTIONS * 3.0, torch.randn(4, 8, generator=torch.Generator().manual_seed(0))]
    )
    metrics = ground_truth_metrics(decoder, TRUTH)
    assert metrics == {
        "gt_recovered": 1.0,
        "gt_parents_recovered": 1.0,
        "gt_children_recovered": 1.0,
        "gt_absorbed_children": 0,
        "gt_absorbed_children_share": 0.0,
    }


def test_a_child_latent_carrying_its_parent_is_absorbed_and_a_missing_child_is_not():
    # Chanin et al.'s pattern: child 2's latent is parent + child; child 3 has no latent at all;
    # child 4's latent leans towards its parent (cosine 0.95 with child 4: still recovered).
    rows = [DIRECTIONS[0], DIRECTIONS[1], DIRECTIONS[0] + DIRECTIONS[2]]
    rows += [DIRECTIONS[4] + 0.33 * DIRECTIONS[1], DIRECTIONS[5], DIRECTIONS[6], DIRECTIONS[7]]
    decoder = torch.stack(rows)
    metrics = ground_truth_metrics(decoder, TRUTH)
    assert metrics["gt_recovered"] == 6 / 8  # 2 and 3 are not
    assert metrics["gt_parents_recovered"] == 1.0
    assert metrics["gt_children_recovered"] == 2 / 4
    assert metrics["gt_absorbed_children"] == 1  # child 2 only
    assert metrics["gt_absorbed_children_share"] == 1 / 4


def test_a_parent_latent_that_absorbs_its_child_counts_too_and_a_world_without_hierarchy():
    # One latent for parent 1 with child 5 merged in (cosine 0.95 with p+c), no latent for child 5.
    merged = DIRECTIONS[1] + 0.7 * DIRECTIONS[5]
    decoder = torch.stack([DIRECTIONS[0], merged, *DIRECTIONS[2:5], DIRECTIONS[6], DIRECTIONS[7]])
    metrics = ground_truth_metrics(decoder, TRUTH)
    assert float(unit_rows(merged[None])[0] @ DIRECTIONS[1]) < 0.9  # the parent is lost as well
    assert metrics["gt_parents_recovered"] == 0.5
    assert metrics["gt_absorbed_children"] == 1
    assert ground_truth_metrics(decoder, GroundTruth(DIRECTIONS)) == {"gt_recovered": 6 / 8}
