"""Train one Top-K SAE: ``python train.py``; sweep: ``python train.py -m seed=1,2,3``."""

import hydra
from omegaconf import DictConfig

from saeseeds.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from saeseeds.train_app import train  # heavy imports after Hydra has parsed the command line

    train(cfg)


if __name__ == "__main__":
    main()
