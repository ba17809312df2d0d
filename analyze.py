"""Seed-stability analysis of trained SAEs.

    python analyze.py sweep_dir=outputs/multirun/DATE/TIME

Reads run folders (the contract in docs/contract.md) and writes a report folder; see
conf/analyze.yaml for every option. Never imports training code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.config import register_analysis_configs
from saeseeds.errors import UserError

register_analysis_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    try:
        run_analysis(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
