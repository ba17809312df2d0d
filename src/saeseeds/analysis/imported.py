"""Runs imported from other libraries (``python -m saeseeds.imports``): what they lack, and the
lines the report shows instead.

An imported run is a contract folder whose cfg.json ``data`` is ``import:<library>``. It has no
trained control (a geometry or random-model control is an SAE trained on control data, which no
other library's folder provides), and, unless the user gave activations at import, no held-out
statistics (``feature_stats.safetensors``, ``metrics.json``). The statistics that need them are
listed in :data:`NEEDS_HELDOUT_STATS`; the analysis skips them for such groups and the report
says so in one line per group, never with a crash. This module reads nothing from disk.
"""

from __future__ import annotations

from typing import Any

IMPORTED_DATA_PREFIX = "import:"
"""cfg.json's ``data`` of an imported run: ``import:saelens``, ``import:sparsify``."""

NEEDS_HELDOUT_STATS = (
    "live-only matching (live_decoder_*, live_encoder_*, live_shared, live_agreement)",
    "reappearance and matched cosine vs firing frequency (Spearman ρ and figures)",
    "example matched pairs",
    "features.csv's fire_count, firing_frequency and live columns",
)
"""What the analysis leaves out for runs without held-out statistics."""


def imported_from(cfg: dict[str, Any]) -> str | None:
    """The library an imported run came from (``saelens``, ``sparsify``), else None."""
    data = cfg.get("data")
    if isinstance(data, str) and data.startswith(IMPORTED_DATA_PREFIX):
        return data.removeprefix(IMPORTED_DATA_PREFIX)
    return None


def seeds_without_heldout_stats(runs: list[Any]) -> list[int]:
    """Seeds of ``runs`` that have no ``feature_stats.safetensors``."""
    return [run.seed for run in runs if run.fire_counts is None]


def heldout_note(seeds: list[int]) -> str:
    """The report's line for a group some of whose runs have no held-out statistics."""
    return (
        f"No held-out statistics for seed(s) {seeds} (imported without --activations), so "
        f"these are not computed for this group: {'; '.join(NEEDS_HELDOUT_STATS)}. "
        "Near-duplicates are counted over all features instead of live ones. Re-import with "
        "`--activations FILE` (held-out activations at the same hook) to compute them."
    )


def import_sentence(runs: list[Any], isotropic: bool) -> str:
    """The verdict's sentence for a group of imported runs, or '' for trained ones;
    ``isotropic``: whether the group was compared with the isotropic null."""
    libraries = sorted({name for run in runs if (name := imported_from(run.cfg)) is not None})
    if not libraries:
        return ""
    judged = (
        "it is judged against random unit-norm dictionaries (the isotropic null, the weakest) only"
        if isotropic
        else "with metrics.baseline=false it is judged against nothing"
    )
    return (
        f" Its SAEs were imported from {' and '.join(libraries)}, so it has no trained control "
        "(a geometry or random-model control is trained on control data, which an import does "
        f"not bring): {judged}. For a geometry control, train the same recipe with saeseeds "
        "and data.control=gaussian."
    )
