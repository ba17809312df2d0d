"""Typed schema of ``conf/analyze.yaml`` (Hydra ConfigStore) and the checks a type cannot express.

Types and enums reject bad overrides at composition (``solver=foo``, ``bootstrap.n_samples=abc``);
:func:`validate_config` rejects values that are well typed but meaningless. This module knows
nothing of the training app's schemas.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore

from saeseeds.analysis.errors import AnalysisConfigError
from saeseeds.tracking import LoggerConfig


class Solver(StrEnum):
    """Linear-assignment solvers; both reach the same optimum (tested), lapjv is faster."""

    lapjv = "lapjv"
    scipy = "scipy"


class MatchingMode(StrEnum):
    """How features of two seeds are paired: ``hungarian`` (one-to-one assignment, needs the full
    n² similarity matrix), ``argmax`` (best partner per feature only, built block by block: MMCS,
    reappearance, subspaces; no matched-cosine statistics), ``auto`` (hungarian up to
    ``argmax_above`` features, argmax beyond)."""

    auto = "auto"
    hungarian = "hungarian"
    argmax = "argmax"


class Device(StrEnum):
    """Where similarity matrices are computed; ``auto`` uses a CUDA GPU when one is present."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class MetricsSwitches:
    """Which optional analyses run; decoder matching and the pair statistics always run."""

    encoder: bool = True
    """Encoder matching (needed for "shared" and "agreement")."""
    reappearance: bool = True
    """Per-feature reappearance p_i with stable and unstable shares (Gerasimov et al.)."""
    overlap: bool = True
    """Overlap vs number of seeds (Paulo & Belrose); needs ``encoder``."""
    frequency: bool = True
    """Matched decoder cosine vs firing frequency (Spearman); reappearance vs frequency is part of
    ``reappearance``."""
    baseline: bool = True
    """The isotropic null: groups of random unit-norm dictionaries (chance level, Monte Carlo
    p-value); trained controls are compared whenever their groups are in sweep_dir."""
    subspaces: bool = True
    """Unstable-feature subspace overlap vs the random expectation r/d_in; needs reappearance."""
    redundancy: bool = True
    """Near-duplicate features inside each dictionary (:mod:`redundancy`); costs one n × n
    similarity per run, in blocks."""
    trajectory: bool = True
    """The group statistics at each training snapshot (runs' ``snapshots/``): one more matching
    per seed pair and snapshot."""
    functional: bool = True
    """Activation correlation of matched features on held-out tokens (runs'
    ``heldout_codes.safetensors``)."""


@dataclass
class ReappearanceConfig:
    """Per-feature reappearance (Gerasimov et al.)."""

    threshold: float = 0.7
    """θ: feature i reappears in seed b when max_j C_dec[i, j] >= θ."""
    epsilon: float = 0.05
    """Stable: p_i >= 1 - ε; unstable: p_i <= ε."""


@dataclass
class SubspaceConfig:
    """Span of the unstable features' decoder rows per seed."""

    max_rank: int = 32
    """r = min(max_rank, unstable count of either seed, d_in)."""


@dataclass
class BootstrapConfig:
    """Seed bootstrap of the group statistics."""

    n_samples: int = 1000
    """Resamples of the group's seeds (with replacement)."""
    confidence: float = 0.95
    """Central interval reported."""
    seed: int = 0


@dataclass
class BaselineConfig:
    """The isotropic null: random unit-norm dictionaries of the runs' shape."""

    n_samples: int = 39
    """Null samples, each S random dictionaries (S = the group's seeds) compared like S seeds;
    the smallest reachable p-value is 1 / (n_samples + 1). Costs n_samples·S(S−1)/2 matchings."""
    seed: int = 0


@dataclass
class ReportConfig:
    """What goes into the report folder."""

    figures: bool = True
    """Write the PNG figures (and embed them in report.md)."""
    examples_per_feature: int = 5
    """Top-activating contexts shown per feature in the example matched pairs."""


@dataclass
class AnalyzeConfig:
    """``python analyze.py [sweep_dir=PATH|[P1,P2]|'GLOB'] [overrides]``."""

    sweep_dir: Any = None
    """Multirun folder(s) or run folder(s): a path, a list or a glob. ``null``: the latest
    multirun folder under ``outputs_root``/multirun."""
    outputs_root: str = "outputs"
    """Where the default sweep_dir is looked for."""
    thresholds: list[float] = field(default_factory=lambda: [0.7, 0.9])
    """τ values of the stability fractions (share of matched pairs with cosine >= τ)."""
    shared_threshold: float = 0.7
    """"Shared" latents have matched decoder and encoder cosines above this (Paulo & Belrose)."""
    duplicate_threshold: float = 0.9
    """Two features of one dictionary whose decoder cosine is at least this are near-duplicates."""
    live_only: bool = True
    """Also match only features live in both runs (fire_count > 0 on held-out tokens)."""
    matching: MatchingMode = MatchingMode.auto
    argmax_above: int = 32768
    """With ``matching=auto``, groups with more features than this use argmax matching."""
    solver: Solver = Solver.lapjv
    device: Device = Device.auto
    block_size: int = 2048
    """Rows of the similarity matrix computed at once (bounds temporary memory)."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    metrics: MetricsSwitches = field(default_factory=MetricsSwitches)
    reappearance: ReappearanceConfig = field(default_factory=ReappearanceConfig)
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    progress: bool = True
    """Show a progress bar over seed pairs."""


def register_analysis_configs() -> None:
    """Make ``analyze_schema`` (and ``schema/logger/logger``) available to conf/analyze.yaml."""
    store = ConfigStore.instance()
    store.store(name="analyze_schema", node=AnalyzeConfig)
    # conf/logger/*.yaml start from "/schema/logger/logger": the same schema as in the training app.
    store.store(group="schema/logger", name="logger", node=LoggerConfig)


# Seeds as the training app takes them (numpy's legacy seeding takes 32 bits).
MAX_SEED = 2**32


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AnalysisConfigError(message)


def validate_config(cfg: Any) -> None:
    """Reject well-typed but meaningless values with a message naming the override to fix."""
    for tau in cfg.thresholds:
        _check(-1.0 <= tau <= 1.0, f"thresholds: {tau} is not a cosine in [-1, 1].")
    _check(len(cfg.thresholds) > 0, "thresholds: give at least one τ, e.g. thresholds=[0.7,0.9].")
    checks = [
        ("shared_threshold", -1.0 <= cfg.shared_threshold <= 1.0, "must be in [-1, 1]"),
        ("duplicate_threshold", -1.0 <= cfg.duplicate_threshold <= 1.0, "must be in [-1, 1]"),
        (
            "reappearance.threshold",
            -1.0 <= cfg.reappearance.threshold <= 1.0,
            "must be in [-1, 1]",
        ),
        (
            "reappearance.epsilon",
            0.0 <= cfg.reappearance.epsilon < 0.5,
            "must be in [0, 0.5) so that stable and unstable do not overlap",
        ),
        ("block_size", cfg.block_size >= 1, "must be a positive number of rows"),
        ("argmax_above", cfg.argmax_above >= 1, "must be a positive number of features"),
        ("bootstrap.n_samples", cfg.bootstrap.n_samples >= 0, "must be >= 0 (0 turns it off)"),
        ("bootstrap.confidence", 0.0 < cfg.bootstrap.confidence < 1.0, "must be in (0, 1)"),
        ("bootstrap.seed", 0 <= cfg.bootstrap.seed < MAX_SEED, "must be an integer in [0, 2^32)"),
        (
            "baseline.n_samples",
            cfg.baseline.n_samples >= 1,
            "must be >= 1 (or metrics.baseline=false)",
        ),
        ("baseline.seed", 0 <= cfg.baseline.seed < MAX_SEED, "must be an integer in [0, 2^32)"),
        ("subspace.max_rank", cfg.subspace.max_rank >= 1, "must be >= 1"),
        ("report.examples_per_feature", cfg.report.examples_per_feature >= 0, "must be >= 0"),
    ]
    for key, valid, rule in checks:
        value = functools.reduce(getattr, key.split("."), cfg)
        _check(valid, f"{key}={value} is not valid: it {rule}.")
    if cfg.metrics.overlap and not cfg.metrics.encoder:
        raise AnalysisConfigError(
            "metrics.overlap needs metrics.encoder=true ('shared' uses both)."
        )
    if cfg.metrics.subspaces and not cfg.metrics.reappearance:
        raise AnalysisConfigError("metrics.subspaces needs metrics.reappearance=true.")


def resolve_matching(requested: Any, n_features: int, argmax_above: int) -> str:
    """The matching a group of ``n_features`` gets: ``hungarian`` or ``argmax``."""
    requested = str(requested)  # a MatchingMode member or its name
    if requested == "auto":
        return "argmax" if n_features > argmax_above else "hungarian"
    return requested
