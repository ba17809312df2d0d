"""Functional agreement of matched features: do two seeds' matched latents fire on the same
held-out tokens?

Training saves each run's latents on the first held-out tokens (``heldout_codes.safetensors``,
sparse; docs/contract.md), the same tokens for every seed of a condition, which its
``heldout_identity`` vouches for. For each seed pair with codes on the same tokens and each
Hungarian-matched decoder pair (i, π(i)): the Pearson correlation of the two latents'
activations over those tokens (undefined, and left out, where either latent is constant on
them, e.g. never fires). Per pair its median is a pair statistic
(``activation_correlation_median``), so the group value, interval and the comparison with the
geometry control are the ones every pair statistic has. Per group also: the Spearman
correlation with the matched decoder cosine, the median for stable features (reappearance
≥ 1 − ε in both seeds) against unstable ones (≤ ε in both), and a random-partner null (each
latent against a random latent of the other seed). Runs without codes (older folders,
imports) are not measured, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from scipy import sparse

from saeseeds import contract
from saeseeds.analysis.group_stats import GroupPairs, difference_of_groups, pair_matrix, spearman

STATISTIC = "activation_correlation_median"
NULL_SEED = 0


@dataclass
class HeldoutCodes:
    """One run's latents on its held-out tokens: CSC [n_tokens, n_features] and the tokens'
    identity."""

    matrix: sparse.csc_matrix
    identity: str

    @property
    def n_tokens(self) -> int:
        return int(self.matrix.shape[0])


def read_codes(run_path: Path, n_features: int) -> HeldoutCodes | str:
    """The run's held-out codes, or why there are none (a sentence)."""
    path = Path(run_path) / contract.HELDOUT_CODES_FILE
    if not path.is_file():
        return f"no {contract.HELDOUT_CODES_FILE}"
    try:
        with safe_open(str(path), framework="numpy") as handle:
            tensors = {name: handle.get_tensor(name) for name in contract.HELDOUT_CODES_TENSORS}
            metadata = handle.metadata() or {}
        n_tokens, identity = int(metadata["n_tokens"]), metadata["heldout_identity"]
        matrix = sparse.csr_matrix(
            (tensors["values"].astype(np.float64), tensors["indices"], tensors["indptr"]),
            shape=(n_tokens, n_features),
        )
        matrix.check_format(full_check=True)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        return f"{contract.HELDOUT_CODES_FILE} is unreadable ({error})"
    if not np.isfinite(matrix.data).all():
        return f"{contract.HELDOUT_CODES_FILE} holds NaN or infinite values"
    return HeldoutCodes(matrix.tocsc(), identity)


def matched_correlations(
    codes_a: HeldoutCodes, codes_b: HeldoutCodes, rows: np.ndarray, columns: np.ndarray
) -> np.ndarray:  # [n_pairs] float64, NaN where a latent is constant on the tokens
    """Pearson correlation over the shared tokens of latent rows[k] of a and columns[k] of b."""
    a, b = codes_a.matrix[:, rows], codes_b.matrix[:, columns]
    n_tokens = codes_a.n_tokens
    mean_a = np.asarray(a.mean(axis=0)).ravel()
    mean_b = np.asarray(b.mean(axis=0)).ravel()
    variance_a = np.asarray(a.multiply(a).mean(axis=0)).ravel() - mean_a**2
    variance_b = np.asarray(b.multiply(b).mean(axis=0)).ravel() - mean_b**2
    covariance = np.asarray(a.multiply(b).sum(axis=0)).ravel() / n_tokens - mean_a * mean_b
    denominator = np.sqrt(np.clip(variance_a, 0, None) * np.clip(variance_b, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = covariance / denominator
    # A constant latent (variance at rounding level) has no defined correlation.
    tiny = 1e-12 * (1.0 + np.maximum(mean_a**2, mean_b**2))
    correlation[(variance_a <= tiny) | (variance_b <= tiny)] = np.nan
    return np.clip(correlation, -1.0, 1.0)


@dataclass
class PairAgreement:
    """Matched pairs (rows of seed a, columns of seed b), their decoder cosines and activation
    correlations, and the random-partner null's correlations."""

    rows: np.ndarray
    columns: np.ndarray
    cosines: np.ndarray
    correlations: np.ndarray
    null: np.ndarray


def pair_agreement(
    group: GroupPairs, key: tuple[int, int], codes: dict[int, HeldoutCodes]
) -> PairAgreement:
    """One seed pair's matched pairs with their correlations (Hungarian matching only)."""
    matching = group.pairs[key].decoder
    if matching is None:
        raise ValueError("functional agreement needs a one-to-one (Hungarian) matching")
    codes_a, codes_b = codes[key[0]], codes[key[1]]
    correlations = matched_correlations(codes_a, codes_b, matching.rows, matching.columns)
    shuffled = np.random.default_rng([NULL_SEED, *key]).permutation(matching.columns)
    null = matched_correlations(codes_a, codes_b, matching.rows, shuffled)
    return PairAgreement(matching.rows, matching.columns, matching.cosines, correlations, null)


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


Measured = tuple[dict[tuple[int, int], PairAgreement], list[str], int | None]


def measure_group(group: GroupPairs) -> Measured:
    """Each measurable pair's agreement (its median goes into the pair's statistics), notes on
    the seeds or pairs that could not be measured and why, and the number of tokens."""
    codes: dict[int, HeldoutCodes] = {}
    notes = []
    for run in group.runs:
        read = read_codes(run.path, run.n_features)
        if isinstance(read, str):
            notes.append(f"seed {run.seed}: {read}")
        else:
            codes[run.seed] = read
    agreements = {}
    for key in group.pairs:
        if key[0] not in codes or key[1] not in codes:
            continue
        if codes[key[0]].identity != codes[key[1]].identity:
            notes.append(
                f"seeds {key[0]} and {key[1]}: their codes are on different held-out activations "
                "(heldout_identity differs: other data, or an activation store rebuilt "
                "differently), so they are not compared"
            )
            continue
        agreement = pair_agreement(group, key, codes)
        agreements[key] = agreement
        median = _median(agreement.correlations)
        group.statistics[key][STATISTIC] = float("nan") if median is None else median
    n_tokens = next(iter(codes.values())).n_tokens if codes else None
    return agreements, notes, n_tokens


def functional_summary(
    report: Any, measured: Measured | None, epsilon: float
) -> tuple[dict[tuple[int, int], PairAgreement], dict[str, Any]]:
    """The group's agreements and extras["functional"]: what :func:`group_summary` gives, with
    the group median and its interval, or ``unavailable`` with the reason."""
    if measured is None:
        reason = "argmax matching: matched pairs need a one-to-one (Hungarian) assignment"
        return {}, {"unavailable": reason}
    agreements, notes, n_tokens = measured
    if not agreements:
        reason = "no seed pair has held-out codes on the same tokens (" + "; ".join(notes) + ")"
        return {}, {"unavailable": reason, "notes": notes}
    summary = group_summary(agreements, report.reappearance, epsilon, n_tokens)
    return agreements, {"median": report.statistics[STATISTIC], **summary, "notes": notes}


def group_summary(
    agreements: dict[tuple[int, int], PairAgreement],
    reappearance: dict[int, np.ndarray],
    epsilon: float,
    n_tokens: int | None,
) -> dict[str, Any]:
    """extras["functional"]: pooled over the measured pairs."""
    correlations = np.concatenate([a.correlations for a in agreements.values()])
    cosines = np.concatenate([a.cosines.astype(np.float64) for a in agreements.values()])
    null = np.concatenate([a.null for a in agreements.values()])
    summary: dict[str, Any] = {
        "n_tokens": n_tokens,
        "pairs_measured": [list(key) for key in agreements],
        "matched_pairs": int(len(correlations)),
        "undefined_share": float(np.mean(~np.isfinite(correlations))),
        "median_pooled": _median(correlations),
        "random_partner_median": _median(null),
        "spearman_vs_decoder_cosine": spearman(cosines, correlations),
    }
    for name, low, high in (("stable", 1 - epsilon, 1.0), ("unstable", 0.0, epsilon)):
        if not reappearance:
            break
        chosen = []
        for (seed_a, seed_b), agreement in agreements.items():
            p_a = reappearance[seed_a][agreement.rows]
            p_b = reappearance[seed_b][agreement.columns]
            both = (p_a >= low) & (p_a <= high) & (p_b >= low) & (p_b <= high)
            chosen.append(agreement.correlations[both])
        values = np.concatenate(chosen)
        summary[name] = {"median": _median(values), "n": int(np.isfinite(values).sum())}
    return summary


def scatter_points(agreements: dict[tuple[int, int], PairAgreement]) -> tuple[np.ndarray, ...]:
    """(matched decoder cosine, activation correlation) of every measured matched pair."""
    cosines = np.concatenate([a.cosines.astype(np.float64) for a in agreements.values()])
    correlations = np.concatenate([a.correlations for a in agreements.values()])
    keep = np.isfinite(correlations)
    return cosines[keep], correlations[keep]


def compare_with_control(condition: Any, control: Any, confidence: float) -> None:
    """The geometry control's agreement as the condition's baseline: its group median and the
    difference (jackknife-t interval, :func:`group_stats.difference_of_groups`)."""
    mine, theirs = condition.extras.get("functional"), control.extras.get("functional")
    if not mine or "unavailable" in mine:
        return
    if not theirs or "unavailable" in theirs:
        reason = (theirs or {}).get("unavailable", "not analysed")
        mine["control"] = {"label": control.label, "unavailable": reason}
        return
    difference = difference_of_groups(
        pair_matrix(condition.pairs, STATISTIC),
        pair_matrix(control.pairs, STATISTIC),
        STATISTIC,
        confidence,
    )
    mine["control"] = {
        "label": control.label,
        "median": theirs["median"]["value"],
        "difference": difference["difference"],
        "difference_ci": difference["difference_ci"],
        "p_value": difference["p_value"],
        "random_partner_median": theirs["random_partner_median"],
        "stable": theirs.get("stable"),
        "unstable": theirs.get("unstable"),
    }
