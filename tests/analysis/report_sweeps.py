"""Sweeps of real run folders for the report page's tests: a condition whose seeds share half of
their features, beside its geometry control, with top-activating contexts that hold markup."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.analysis.run_folders import hydra_config, random_directions, unit, write_run_folder

SCRIPT_CONTEXT = '<script>window.pwned = 1</script> and <img src=x onerror="window.pwned = 2">'


def contexts_of(seed: int, feature: int, per_feature: int, marker: tuple[str, str]) -> list[dict]:
    """Distinct, searchable contexts as long as the trainer's (12 tokens before the firing one, 4
    after); seed 1's feature 3 fires on markup."""
    contexts = []
    for rank in range(per_feature):
        token = f"ing{feature}"
        before = f"seed{seed} the quick brown fox jumps over a lazy dog and then "
        before = SCRIPT_CONTEXT if (seed, feature, rank) == (1, 3, 0) else before
        text = f"{before}{marker[0]}{token}{marker[1]} word{rank} | *x* `y`"
        contexts.append({"activation": round(4.0 - rank * 0.5, 3), "text": text, "token": token})
    return contexts


def write_page_sweep(
    sweep: Path,
    n_features: int,
    d_in: int,
    seeds: tuple[int, ...] = (1, 2, 3),
    per_feature: int = 3,
    shared_fraction: float = 0.5,
) -> Path:
    """A condition (the first ``shared_fraction`` of each seed's features are noisy copies of one
    dictionary, the rest the seed's own random directions) and its geometry control (random
    dictionaries), both with every ``seeds``; the condition's runs have top_examples.json, half
    written with the earlier ``<<``/``>>`` marker."""
    shared = int(n_features * shared_fraction)
    base = random_directions(n_features, d_in, seed=7)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        noise = 0.1 * rng.standard_normal((shared, d_in)) / np.sqrt(d_in)
        own = random_directions(n_features - shared, d_in, seed=100 + seed)
        condition = np.vstack([unit(base[:shared] + noise), own])[rng.permutation(n_features)]
        marker = ("<<", ">>") if seed % 2 else ("⟦", "⟧")
        fire = rng.integers(1, 50, n_features)
        fire[rng.choice(n_features, max(1, n_features // 20), replace=False)] = 0
        fire[3] = 25  # the feature whose context holds markup
        examples = {
            feature: contexts_of(seed, feature, per_feature, marker)
            for feature in range(n_features)
            if fire[feature] > 0
        }
        for control, decoder, top_examples in (
            ("none", condition, examples),
            ("gaussian", random_directions(n_features, d_in, seed=200 + seed), None),
        ):
            config = hydra_config(n_features, d_in, 4, seed, data__control=control)
            write_run_folder(
                sweep / f"data.control={control},seed={seed}", decoder, seed=seed,
                fire_count=fire, config=config, top_examples=top_examples, n_tokens=2000,
            )  # fmt: skip
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep
