"""Example matched pairs: the best pair, one near the group median and a poorly matched live
pair, each with both features' top-activating contexts where the runs have ``top_examples.json``.

This is the "feature 47 ↔ feature 82 both fire on Paris" view: a reader checks by eye that a
high cosine means the same concept. Also here: reading one context apart into the text before the
firing token, the token and the text after, whichever marker the trainer wrote it with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saeseeds.analysis.group_stats import GroupPairs
from saeseeds.contract import EARLIER_TOP_EXAMPLES_MARKERS, TOP_EXAMPLES_MARKER


def _candidates(group: GroupPairs, group_median: float) -> list[tuple[int, int, int, int, float]]:
    """Per pair, its best, nearest-to-median and worst matched live-live pair, as
    (seed_a, feature_a, seed_b, feature_b, decoder cosine)."""
    candidates = []
    for (seed_a, seed_b), pair in group.pairs.items():
        live_a, live_b = group.run(seed_a).live_mask, group.run(seed_b).live_mask
        keep = np.flatnonzero(live_a[pair.decoder.rows] & live_b[pair.decoder.columns])
        if len(keep) == 0:
            continue
        cosines = pair.decoder.cosines[keep]
        for position in {
            int(np.argmax(cosines)),
            int(np.argmin(np.abs(cosines - group_median))),
            int(np.argmin(cosines)),
        }:
            index = keep[position]
            row, column = int(pair.decoder.rows[index]), int(pair.decoder.columns[index])
            candidates.append((seed_a, row, seed_b, column, float(pair.decoder.cosines[index])))
    return candidates


def _describe(
    group: GroupPairs, kind: str, candidate: tuple[int, int, int, int, float], per_feature: int
) -> dict[str, Any]:
    seed_a, feature_a, seed_b, feature_b, cosine = candidate
    run_a, run_b = group.run(seed_a), group.run(seed_b)
    encoder_cosine = float(
        run_a.encoder_directions[feature_a].astype(np.float64)
        @ run_b.encoder_directions[feature_b].astype(np.float64)
    )
    return {
        "kind": kind,
        "seed_a": seed_a,
        "feature_a": feature_a,
        "seed_b": seed_b,
        "feature_b": feature_b,
        "decoder_cosine": cosine,
        "encoder_cosine": encoder_cosine,
        "firing_frequency_a": float(run_a.firing_frequency[feature_a]),
        "firing_frequency_b": float(run_b.firing_frequency[feature_b]),
        "top_examples_a": run_a.top_examples().get(feature_a, [])[:per_feature],
        "top_examples_b": run_b.top_examples().get(feature_b, [])[:per_feature],
    }


def example_pairs(group: GroupPairs, group_median: float, per_feature: int) -> list[dict[str, Any]]:
    """Best, near-median and poorly matched live pairs (fewer if there are no live pairs)."""
    candidates = _candidates(group, group_median)
    if not candidates:
        return []
    cosines = np.array([candidate[4] for candidate in candidates])
    chosen = {
        "best": int(np.argmax(cosines)),
        "near median": int(np.argmin(np.abs(cosines - group_median))),
        "poorly matched": int(np.argmin(cosines)),
    }
    return [_describe(group, kind, candidates[i], per_feature) for kind, i in chosen.items()]


def split_context(context: dict[str, Any]) -> tuple[str, str, str]:
    """(text before, firing token, text after) of one top-examples context, written with the
    current marker or an earlier one; (whole text, "", "") when no marked token is found."""
    text, token = context["text"], context["token"]
    for opening, closing in (TOP_EXAMPLES_MARKER, *EARLIER_TOP_EXAMPLES_MARKERS):
        marked = opening + token + closing
        position = text.find(marked)
        if position >= 0:
            return text[:position], token, text[position + len(marked) :]
    return text, "", ""


def marked_text(context: dict[str, Any]) -> str:
    """The context with its firing token wrapped in the current marker, whatever wrote it."""
    before, token, after = split_context(context)
    if (before, token, after) == (context["text"], "", ""):  # no marked token: leave it as is
        return before
    return before + TOP_EXAMPLES_MARKER[0] + token + TOP_EXAMPLES_MARKER[1] + after
