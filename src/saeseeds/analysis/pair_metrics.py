"""Comparing two seeds of one group: matchings and the pair statistics of docs/metrics.md.

For seeds (a, b): C_dec and C_enc (cosines of unit decoder rows / encoder columns), Hungarian
matchings π_dec and π_enc, the live-only rectangular matchings, and from them median / mean
matched cosine, stability fractions (c >= τ), shared (c_dec > 0.7 and c_enc > 0.7), agreement
(π_dec(i) = π_enc(i)), PW-MCC (mean |matched cosine|) and MMCS (mean of row maxima of C_dec, no
assignment). At most two n² matrices are alive at a time. With argmax matching there is no
assignment and no stored matrix: only the best partner of each feature (MMCS, reappearance),
built block by block. Statistics over several pairs live in :mod:`group_stats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from saeseeds.analysis.loading import RunFolder
from saeseeds.analysis.matching import Matching, SharedMatrix, match, matching_from_assignment
from saeseeds.analysis.similarity import (
    available_memory_bytes,
    best_matches,
    best_matches_between,
    cosine_similarity,
    matrix_bytes,
)

HUNGARIAN = "hungarian"
ARGMAX = "argmax"


@dataclass
class ComputeSettings:
    """How pair matrices are built and solved."""

    matching: str = HUNGARIAN
    """``hungarian`` (assignments and every pair statistic) or ``argmax`` (best partners and MMCS
    only); a group's mode comes from :func:`config.resolve_matching`."""
    solver: str = "lapjv"
    device: str = "cpu"
    block_size: int = 2048
    encoder: bool = True
    live_only: bool = True
    background_min_features: int = 2048
    """From this size on, with lapjv, the decoder solve runs in a worker process beside the
    encoder's matrix and solve (lapjv holds the GIL, so only a process overlaps it)."""


@dataclass
class PairResult:
    """Everything kept of one seed pair; matchings use the runs' own feature indices."""

    seed_a: int
    seed_b: int
    n_features_a: int
    n_features_b: int
    decoder: Matching | None
    """None with argmax matching: no one-to-one assignment was made."""
    best: dict[str, np.ndarray]
    """argmax partner and max cosine of C_dec per row (seed a) and column (seed b)."""
    encoder: Matching | None = None
    decoder_live: Matching | None = None
    encoder_live: Matching | None = None
    n_live_a: int = 0
    n_live_b: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mmcs(self) -> float:
        return float(np.mean(self.best["row_max"], dtype=np.float64))


def _timed(timings: dict[str, float], key: str, start: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _full_matching(
    rows: np.ndarray,
    columns: np.ndarray,
    settings: ComputeSettings,
    timings: dict[str, float],
    with_best: bool = True,
) -> tuple[Matching, dict[str, np.ndarray]]:
    """Match all features; also the argmax partners per row and column when asked."""
    start = time.perf_counter()
    similarity = cosine_similarity(
        rows, columns, block_size=settings.block_size, device=settings.device
    )
    _timed(timings, "similarity_s", start)
    best: dict[str, np.ndarray] = {}
    if with_best:
        start = time.perf_counter()
        best = best_matches(similarity, settings.block_size)
        _timed(timings, "best_match_s", start)
    start = time.perf_counter()
    matching = match(similarity, solver=settings.solver)
    _timed(timings, "solver_s", start)
    return matching, best


def _live_matching(
    rows: np.ndarray,
    columns: np.ndarray,
    live_rows: np.ndarray,
    live_columns: np.ndarray,
    settings: ComputeSettings,
    timings: dict[str, float],
) -> Matching:
    """Rectangular matching of the live features, returned in the runs' own indices."""
    start = time.perf_counter()
    similarity = cosine_similarity(
        rows[live_rows],
        columns[live_columns],
        block_size=settings.block_size,
        device=settings.device,
        square=settings.solver == "lapjv",
    )
    _timed(timings, "similarity_s", start)
    start = time.perf_counter()
    live = match(similarity, len(live_rows), len(live_columns), solver=settings.solver)
    _timed(timings, "solver_s", start)
    return Matching(live_rows[live.rows], live_columns[live.columns], live.cosines)


def _solve_decoder_in_background(settings: ComputeSettings, n_a: int, n_b: int) -> bool:
    """Overlap the decoder solve with the encoder's matrix when that pays and two matrices fit
    in the memory available now (otherwise one matrix at a time)."""
    available = available_memory_bytes()
    two_fit = available is None or 2 * matrix_bytes(max(n_a, n_b), max(n_a, n_b)) < available
    return (
        settings.solver == "lapjv"
        and settings.encoder
        and min(n_a, n_b) >= settings.background_min_features
        and two_fit
    )


def _overlapped_matchings(
    decoders: tuple[np.ndarray, np.ndarray],
    encoders: tuple[np.ndarray, np.ndarray],
    settings: ComputeSettings,
    timings: dict[str, float],
) -> tuple[Matching, dict[str, np.ndarray], Matching]:
    """Decoder and encoder matchings, the decoder's lapjv solve running in a worker process."""
    n_rows, n_cols = decoders[0].shape[0], decoders[1].shape[0]
    shared = SharedMatrix(max(n_rows, n_cols))
    try:
        start = time.perf_counter()
        cosine_similarity(
            *decoders, block_size=settings.block_size, device=settings.device,
            square=True, out=shared.array,
        )  # fmt: skip
        _timed(timings, "similarity_s", start)
        start = time.perf_counter()
        best = best_matches(shared.array[:n_rows, :n_cols], settings.block_size)
        _timed(timings, "best_match_s", start)
        start = time.perf_counter()
        decoder_solve = shared.solve_in_background()
        encoder, _ = _full_matching(*encoders, settings, timings, False)
        decoder = matching_from_assignment(shared.array, decoder_solve.result(), n_rows, n_cols)
        timings["overlapped_s"] = timings.get("overlapped_s", 0.0) + time.perf_counter() - start
    finally:
        shared.release()
    return decoder, best, encoder


def _argmax_pair(run_a: RunFolder, run_b: RunFolder, settings: ComputeSettings) -> PairResult:
    """Best decoder partners only: no assignment, no n² matrix kept."""
    start = time.perf_counter()
    best = best_matches_between(
        run_a.decoder_directions,
        run_b.decoder_directions,
        block_size=settings.block_size,
        device=settings.device,
    )
    timings = {"best_match_s": time.perf_counter() - start}
    return PairResult(
        run_a.seed, run_b.seed, run_a.n_features, run_b.n_features, None, best, timings=timings
    )


def compare_pair(run_a: RunFolder, run_b: RunFolder, settings: ComputeSettings) -> PairResult:
    """Decoder (and encoder) matchings of two runs, full and live-only; best partners only with
    argmax matching."""
    if settings.matching == ARGMAX:
        return _argmax_pair(run_a, run_b, settings)
    timings: dict[str, float] = {}
    live_a = live_b = np.zeros(0, dtype=np.int64)  # no held-out statistics needed without it
    if settings.live_only:
        live_a, live_b = np.flatnonzero(run_a.live_mask), np.flatnonzero(run_b.live_mask)
    all_live = len(live_a) == run_a.n_features and len(live_b) == run_b.n_features

    def live_only(full: Matching, rows: np.ndarray, columns: np.ndarray) -> Matching:
        if all_live:  # the same problem as the full matching
            return full
        return _live_matching(rows, columns, live_a, live_b, settings, timings)

    decoder_a, decoder_b = run_a.decoder_directions, run_b.decoder_directions
    encoder_a, encoder_b = run_a.encoder_directions, run_b.encoder_directions
    if _solve_decoder_in_background(settings, run_a.n_features, run_b.n_features):
        decoder, best, encoder = _overlapped_matchings(
            (decoder_a, decoder_b), (encoder_a, encoder_b), settings, timings
        )
    else:
        decoder, best = _full_matching(decoder_a, decoder_b, settings, timings)
        encoder = None
        if settings.encoder:
            encoder, _ = _full_matching(encoder_a, encoder_b, settings, timings, False)
    result = PairResult(
        run_a.seed,
        run_b.seed,
        run_a.n_features,
        run_b.n_features,
        decoder,
        best,
        n_live_a=len(live_a),
        n_live_b=len(live_b),
        timings=timings,
    )
    if settings.live_only:
        result.decoder_live = live_only(decoder, decoder_a, decoder_b)
    if encoder is not None:
        result.encoder = encoder
        if settings.live_only:
            result.encoder_live = live_only(encoder, encoder_a, encoder_b)
    return result


def cosines_by_row(matching: Matching, n_rows: int) -> np.ndarray:
    """Matched cosine per row feature, NaN where the row is unmatched."""  # [n_rows]
    by_row = np.full(n_rows, np.nan, dtype=np.float32)
    by_row[matching.rows] = matching.cosines
    return by_row


def cosines_by_column(matching: Matching, n_cols: int) -> np.ndarray:
    """Matched cosine per column feature, NaN where the column is unmatched."""  # [n_cols]
    by_column = np.full(n_cols, np.nan, dtype=np.float32)
    by_column[matching.columns] = matching.cosines
    return by_column


def shared_masks(pair: PairResult, threshold: float, live: bool = False) -> tuple[np.ndarray, ...]:
    """Per feature of a and of b: matched with c_dec > threshold and c_enc > threshold."""
    decoder = pair.decoder_live if live else pair.decoder
    encoder = pair.encoder_live if live else pair.encoder
    if decoder is None or encoder is None:
        raise ValueError("'shared' needs decoder and encoder matchings (metrics.encoder=true)")
    with np.errstate(invalid="ignore"):
        shared_a = (cosines_by_row(decoder, pair.n_features_a) > threshold) & (
            cosines_by_row(encoder, pair.n_features_a) > threshold
        )
        shared_b = (cosines_by_column(decoder, pair.n_features_b) > threshold) & (
            cosines_by_column(encoder, pair.n_features_b) > threshold
        )
    return shared_a, shared_b


def _agreement(decoder: Matching, encoder: Matching, n_rows: int) -> float:
    """Share of matched rows whose decoder and encoder partners are the same feature."""
    partner_dec = np.full(n_rows, -1, dtype=np.int64)
    partner_enc = np.full(n_rows, -2, dtype=np.int64)
    partner_dec[decoder.rows] = decoder.columns
    partner_enc[encoder.rows] = encoder.columns
    return float(np.sum(partner_dec == partner_enc)) / max(len(decoder.rows), 1)


def _matching_stats(prefix: str, matching: Matching, thresholds: list[float]) -> dict[str, float]:
    cosines = matching.cosines.astype(np.float64)
    if len(cosines) == 0:
        stats = {f"{prefix}median": float("nan"), f"{prefix}mean": float("nan")}
        stats.update({f"{prefix}stability@{tau:g}": float("nan") for tau in thresholds})
        return stats
    stats = {f"{prefix}median": float(np.median(cosines)), f"{prefix}mean": float(cosines.mean())}
    # The denominator is the number of matched pairs (docs/metrics.md, live-only).
    stats.update(
        {f"{prefix}stability@{tau:g}": float(np.mean(cosines >= tau)) for tau in thresholds}
    )
    return stats


def pwmcc(decoder: Matching) -> float:
    """PW-MCC (Song et al. 2025): the mean |cosine| of the Hungarian-matched decoder directions."""
    if len(decoder.cosines) == 0:
        return float("nan")
    return float(np.mean(np.abs(decoder.cosines.astype(np.float64))))


def pair_statistics(
    pair: PairResult, thresholds: list[float], shared_threshold: float
) -> dict[str, float]:
    """Flat pair metrics: decoder_*, encoder_*, live_decoder_*, shared, agreement, mmcs, ...;
    only mmcs with argmax matching (the rest needs an assignment)."""
    if pair.decoder is None:
        return {"mmcs": pair.mmcs}
    stats = {"mmcs": pair.mmcs, "n_matched": float(len(pair.decoder.rows))}
    stats.update(_matching_stats("decoder_", pair.decoder, thresholds))
    stats["pwmcc"] = pwmcc(pair.decoder)
    variants = [("", pair.decoder, pair.encoder, pair.n_features_a)]
    if pair.decoder_live is not None:
        stats.update(_matching_stats("live_decoder_", pair.decoder_live, thresholds))
        stats.update(
            n_live_a=float(pair.n_live_a),
            n_live_b=float(pair.n_live_b),
            live_n_matched=float(len(pair.decoder_live.rows)),
        )
        variants.append(("live_", pair.decoder_live, pair.encoder_live, pair.n_features_a))
    if pair.encoder is not None:
        stats.update(_matching_stats("encoder_", pair.encoder, thresholds))
        if pair.encoder_live is not None:
            stats.update(_matching_stats("live_encoder_", pair.encoder_live, thresholds))
        for prefix, decoder, encoder, n_rows in variants:
            shared_a, _ = shared_masks(pair, shared_threshold, live=prefix == "live_")
            stats[f"{prefix}shared"] = float(shared_a.sum()) / max(len(decoder.rows), 1)
            stats[f"{prefix}agreement"] = _agreement(decoder, encoder, n_rows)
    return stats
