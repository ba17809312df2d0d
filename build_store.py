"""Build an activation store without training: ``python build_store.py data=pysource
data.n_tokens=4194304``; in parallel over shard ranges:
``python build_store.py -m store.part=0,1,2,3 store.parts=4 hydra/launcher=joblib``.

It composes the same model, hook and data groups as train.py, so ``train.py`` with the same
options (and the same ``paths.cache_dir``) reads the store it built: build on a GPU machine, train
anywhere. A user's error is one line on stderr and exit status 2.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saeseeds.config import register_configs
from saeseeds.entry import run_then_exit
from saeseeds.errors import UserError
from saeseeds.io import remove_folder_if_only

register_configs()
# What Hydra writes into a job's folder (output_subdir is null: only the log).
HYDRA_LEFTOVERS = {"build_store.log"}


@hydra.main(version_base="1.3", config_path="conf", config_name="build_store")
def main(cfg: DictConfig) -> None:
    from saeseeds.activations.build_job import build_store

    try:
        build_store(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        # A refused job leaves no folder behind (the store itself is under paths.cache_dir).
        remove_folder_if_only(HydraConfig.get().runtime.output_dir, HYDRA_LEFTOVERS)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    run_then_exit(main)
