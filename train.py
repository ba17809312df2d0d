"""Train one SAE: ``python train.py``; sweep: ``python train.py -m seed=1,2,3``."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from saeseeds.config import register_configs
from saeseeds.errors import UserError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    # Heavy imports after Hydra has parsed the command line, so --help and --cfg stay fast.
    from saeseeds.training.run import train

    try:
        train(cfg)
    except UserError as error:
        # A user's input error: the message says what to change; a traceback would bury it.
        logging.getLogger("saeseeds").error("%s", error)
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
