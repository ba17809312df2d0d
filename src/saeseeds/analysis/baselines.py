"""The chance level: the same pair statistics for random unit-norm dictionaries of the same shape.

Each baseline sample is a pair of independent random dictionaries (Gaussian rows, normalised;
decoder and encoder drawn independently), compared exactly like two seeds. The p-value of an
observed group median is permutation-style: p = (1 + #{null pair medians >= observed}) /
(1 + n_samples), so its smallest value is 1 / (n_samples + 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saeseeds.analysis.loading import RunFolder, unit_rows
from saeseeds.analysis.pair_metrics import ComputeSettings, compare_pair, pair_statistics

HISTOGRAM_SAMPLES = 3  # baseline pairs whose matched cosines are kept for the histograms


@dataclass
class Baseline:
    """Chance-level statistics for one (n_features, d_in)."""

    n_features: int
    d_in: int
    samples: list[dict[str, float]]
    """pair_statistics of each random pair."""
    matched_cosines: np.ndarray  # [≤ HISTOGRAM_SAMPLES * n_features] decoder matched cosines

    def chance(self) -> dict[str, float]:
        """Mean over samples of each statistic."""
        names = self.samples[0].keys()
        return {name: float(np.nanmean([s[name] for s in self.samples])) for name in names}

    def null_medians(self) -> np.ndarray:  # [n_samples]
        return np.array([sample["decoder_median"] for sample in self.samples])

    def p_value(self, observed_median: float) -> float:
        """Share of the null at or above the observed group median (with the +1 correction)."""
        null = self.null_medians()
        return float((1 + np.sum(null >= observed_median)) / (1 + len(null)))


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
    n_samples: int,
    settings: ComputeSettings,
    thresholds: list[float],
    shared_threshold: float,
    seed: int = 0,
) -> Baseline:
    """Compare ``n_samples`` pairs of independent random dictionaries."""
    rng = np.random.default_rng([seed, n_features, d_in])
    # Random dictionaries are all live, so live-only would repeat the full matching.
    baseline_settings = dataclasses.replace(settings, live_only=False)
    samples, cosines = [], []
    for index in range(n_samples):
        run_a = random_run(n_features, d_in, rng, 2 * index, settings.encoder)
        run_b = random_run(n_features, d_in, rng, 2 * index + 1, settings.encoder)
        pair = compare_pair(run_a, run_b, baseline_settings)
        samples.append(pair_statistics(pair, thresholds, shared_threshold))
        if index < HISTOGRAM_SAMPLES:
            cosines.append(pair.decoder.cosines)
    return Baseline(n_features, d_in, samples, np.concatenate(cosines))
