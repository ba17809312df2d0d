"""conf/analyze.yaml composes against its typed schema; bad values fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from saeseeds.analysis.config import (
    AnalyzeConfig,
    Solver,
    register_analysis_configs,
    validate_config,
)
from saeseeds.analysis.errors import AnalysisConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_analyze(*overrides: str):
    register_analysis_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="analyze", overrides=list(overrides))


def test_defaults_match_design_md():
    cfg = compose_analyze()
    assert list(cfg.thresholds) == [0.7, 0.9]
    assert cfg.shared_threshold == 0.7 and cfg.live_only is True
    assert (cfg.reappearance.threshold, cfg.reappearance.epsilon) == (0.7, 0.05)
    assert cfg.solver == Solver.lapjv and cfg.logger.enabled is True
    assert cfg.sweep_dir is None
    validate_config(cfg)


def test_overrides_reach_every_option():
    cfg = compose_analyze(
        "sweep_dir=[a,b]",
        "logger=none",
        "solver=scipy",
        "thresholds=[0.5]",
        "live_only=false",
        "bootstrap.n_samples=50",
        "baseline.n_samples=5",
        "metrics.subspaces=false",
    )
    assert list(cfg.sweep_dir) == ["a", "b"] and cfg.logger.enabled is False
    assert cfg.solver == Solver.scipy and list(cfg.thresholds) == [0.5]
    assert (cfg.bootstrap.n_samples, cfg.baseline.n_samples) == (50, 5)
    assert cfg.live_only is False and cfg.metrics.subspaces is False


@pytest.mark.parametrize(
    "override", ["solver=hungarian", "bootstrap.n_samples=abc", "device=tpu", "live_only=maybe"]
)
def test_badly_typed_overrides_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_analyze(override)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"thresholds": [1.5]}, "not a cosine"),
        ({"reappearance.epsilon": 0.6}, "reappearance.epsilon"),
        ({"bootstrap.confidence": 1.0}, "bootstrap.confidence"),
        ({"metrics.encoder": False}, "metrics.overlap needs metrics.encoder"),
    ],
)
def test_meaningless_values_are_rejected(change, message):
    cfg = OmegaConf.structured(AnalyzeConfig)
    for key, value in change.items():
        OmegaConf.update(cfg, key, value)
    with pytest.raises(AnalysisConfigError, match=message):
        validate_config(cfg)
