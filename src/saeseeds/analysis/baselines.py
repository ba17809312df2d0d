"""The isotropic null: the same group statistics for random unit-norm dictionaries.

Each null sample is a "group" of S random dictionaries of the runs' shape (S = the group's number
of seeds; Gaussian rows, normalised; decoder and encoder drawn independently), compared exactly
like S seeds: all S·(S−1)/2 pairs are matched and the pair statistics aggregated as for the
observed group (median of pair medians, mean of the others). The observed group's headline
statistic (the median matched cosine; MMCS with argmax matching, whose null groups are compared
the same way) is then judged by a Monte Carlo test:
p = (1 + #{null group values >= observed}) / (1 + n_samples), so its smallest value is
1 / (n_samples + 1).

Random directions in d_in dimensions are the weakest null: real activations are anisotropic, so
SAEs trained on featureless data with their geometry (``data.control=gaussian``) match far better
than this. :mod:`saeseeds.analysis.controls` compares a condition with those trained controls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from saeseeds.analysis.group_stats import aggregate
from saeseeds.analysis.loading import RunFolder, unit_rows
from saeseeds.analysis.pair_metrics import (
    HUNGARIAN,
    ComputeSettings,
    compare_pair,
    pair_statistics,
)

HISTOGRAM_PAIRS = 3  # null pairs whose matched cosines are kept for the histograms


@dataclass
class Baseline:
    """Null group statistics for one (n_features, d_in, number of seeds)."""

    n_features: int
    d_in: int
    n_seeds: int
    samples: list[dict[str, float]]
    """Group statistics of each null sample (S random dictionaries)."""
    matched_cosines: np.ndarray  # [≤ HISTOGRAM_PAIRS * n_features]; empty with argmax

    def chance(self) -> dict[str, float]:
        """Mean over null samples of each group statistic: the chance level."""
        names = self.samples[0].keys()
        return {name: float(np.nanmean([s[name] for s in self.samples])) for name in names}

    def null_values(self, statistic: str = "decoder_median") -> np.ndarray:  # [n_samples]
        return np.array([sample[statistic] for sample in self.samples])

    def p_value(self, observed: float, statistic: str = "decoder_median") -> float:
        """Monte Carlo p-value of an observed group value (with the +1 correction)."""
        null = self.null_values(statistic)
        return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def random_run(
    n_features: int, d_in: int, rng: np.random.Generator, seed: int = 0, encoder: bool = True
) -> RunFolder:
    """A random dictionary shaped like a run; every feature counts as live."""
    decoder = unit_rows(rng.standard_normal((n_features, d_in), dtype=np.float32))
    # Without encoder matching the encoder is never read, so it need not be drawn.
    encoder_rows = rng.standard_normal((n_features, d_in), dtype=np.float32) if encoder else decoder
    return RunFolder(
        path=Path(f"<random dictionary {seed}>"),
        seed=seed,
        cfg={},
        comparable_config={},
        decoder_directions=decoder,
        encoder_directions=unit_rows(encoder_rows) if encoder else decoder,
        fire_counts=np.ones(n_features, dtype=np.int64),
        n_tokens=1,
    )


def random_baseline(
    n_features: int,
    d_in: int,
    n_seeds: int,
    n_samples: int,
    settings: ComputeSettings,
    thresholds: list[float],
    shared_threshold: float,
    seed: int = 0,
) -> Baseline:
    """``n_samples`` null groups of ``n_seeds`` random dictionaries each."""
    rng = np.random.default_rng([seed, n_features, d_in, n_seeds])
    # Random dictionaries are all live, so live-only would repeat the full matching.
    null_settings = dataclasses.replace(settings, live_only=False)
    encoder = settings.encoder and settings.matching == HUNGARIAN  # argmax reads decoders only
    samples, cosines = [], []
    for _ in range(n_samples):
        runs = [random_run(n_features, d_in, rng, s, encoder) for s in range(n_seeds)]
        pair_stats = []
        for run_a, run_b in combinations(runs, 2):
            pair = compare_pair(run_a, run_b, null_settings)
            pair_stats.append(pair_statistics(pair, thresholds, shared_threshold))
            if len(cosines) < HISTOGRAM_PAIRS and pair.decoder is not None:
                cosines.append(pair.decoder.cosines)
        samples.append(
            {
                name: aggregate(np.array([stats[name] for stats in pair_stats]), name)
                for name in pair_stats[0]
            }
        )
    matched = np.concatenate(cosines) if cosines else np.zeros(0, dtype=np.float32)
    return Baseline(n_features, d_in, n_seeds, samples, matched)
