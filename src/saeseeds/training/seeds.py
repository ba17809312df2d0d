"""The seeds of a job and the folder each one writes: ``seed=S`` trains one seed into the job's
own folder; ``'seeds=[1,2,3]' order_seed=N`` trains several on one batch stream, and each seed's
folder is the one its own job (``seed=S order_seed=N``, the other overrides the same) would
write. Inside a multirun it is named from that job's overrides (``seeds=[...]`` replaced by
``seed=S``, with the default ``hydra.sweep.subdir`` rule) in the same sweep folder; in a single
run it is ``<hydra.run.dir>/seed=S``. A multi-seed job's own Hydra folder keeps its log and its
checkpoint (``checkpoints/last.ckpt``, every seed together); no seed folder has checkpoints.
Also here: the ``.hydra/`` record each folder gets once its job is accepted. Imports neither
torch nor Lightning.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from saeseeds import contract
from saeseeds.config import job_subdir
from saeseeds.errors import ConfigError
from saeseeds.io import atomic_write_text
from saeseeds.training.lifecycle.records import is_multirun
from saeseeds.training.lifecycle.resume import SeedRun, resolved_run_config


def seed_config(cfg: DictConfig, seed: int, run_dir: Path | None = None) -> DictConfig:
    """``cfg`` as the job ``seed=<seed>`` composes it (``seeds`` null); with ``run_dir``, its
    ``paths.output_dir`` points there instead of at the multi-seed job's Hydra folder."""
    single = copy.deepcopy(cfg)
    OmegaConf.set_readonly(single, False)
    with open_dict(single):
        single.seed = int(seed)
        single.seeds = None
        if run_dir is not None:
            single.paths.output_dir = str(run_dir)
    return single


def seed_overrides(overrides: list[str], seed: int) -> list[str]:
    """The job ``seed=<seed>``'s overrides: ``seeds=[...]`` replaced by ``seed=<seed>``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [
        f"seed={seed}" if override.key_or_group == "seeds" else line
        for override, line in zip(parsed, overrides, strict=True)
    ]


def override_dirname(overrides: list[str], exclude_keys: list[str], item_sep: str, kv_sep: str):
    """``hydra.job.override_dirname`` of a job with these overrides (Hydra's rule: sorted lines
    whose key is not excluded, joined)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    lines = sorted(
        line
        for override, line in zip(parsed, overrides, strict=True)
        if override.key_or_group not in exclude_keys
    )
    return item_sep.join(lines).replace("=", kv_sep)


def job_runs(cfg: DictConfig, hydra_cfg: Any | None) -> list[SeedRun]:
    """Every seed the job trains, with its folder, config and overrides, in the order of
    ``seeds`` (one seed, in the job's own folder, without ``seeds``)."""
    job_dir = Path(str(cfg.paths.output_dir))
    task = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    if cfg.get("seeds") is None:
        return [SeedRun(int(cfg.seed), job_dir, cfg, task, resolved_run_config(cfg))]
    check_no_seed_override(hydra_cfg)
    runs = []
    for seed in [int(seed) for seed in cfg.seeds]:
        overrides = seed_overrides(task, seed)
        if is_multirun(hydra_cfg):
            naming = hydra_cfg.job.config.override_dirname
            name = override_dirname(
                overrides, list(naming.exclude_keys), naming.item_sep, naming.kv_sep
            )
            run_dir = Path(hydra_cfg.sweep.dir) / job_subdir(name, f"{hydra_cfg.job.num}.{seed}")
        else:
            run_dir = job_dir / f"seed={seed}"
        single = seed_config(cfg, seed, run_dir)
        runs.append(SeedRun(seed, run_dir, single, overrides, resolved_run_config(single)))
    return runs


def check_no_seed_override(hydra_cfg: Any | None) -> None:
    if hydra_cfg is None:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    if any(override.key_or_group == "seed" for override in parsed):
        raise ConfigError(
            "Set either seed=... (one seed per job; -m seed=1,2,3 sweeps) or 'seeds=[...]' (one "
            "job trains them all), not both."
        )


def write_hydra_files(
    run: SeedRun, cfg: DictConfig, hydra_cfg: Any | None, own_folder: bool
) -> None:
    """``.hydra/`` of the seed's folder, as Hydra would have written it for the seed's own job
    (Hydra's own writing is turned off in ``conf/hydra/default.yaml``, so that a refused command
    never rewrites a finished folder's record)."""
    from hydra.core.hydra_config import HydraConfig

    if hydra_cfg is None or hydra_cfg.output_subdir is not None:
        return  # not a Hydra run, or Hydra wrote it itself (hydra.output_subdir was set)
    hydra_record, config = HydraConfig.instance().cfg, cfg
    if not own_folder:
        # A plain copy: Hydra marks parts of its own config read-only.
        hydra_record = OmegaConf.create(OmegaConf.to_container(hydra_record))
        with open_dict(hydra_record):
            hydra_record.hydra.overrides.task = run.overrides
            hydra_record.hydra.runtime.output_dir = str(run.run_dir.absolute())
            naming = hydra_cfg.job.config.override_dirname
            hydra_record.hydra.job.override_dirname = override_dirname(
                run.overrides, list(naming.exclude_keys), naming.item_sep, naming.kv_sep
            )
        config = seed_config(cfg, run.seed)
    hydra_dir = run.run_dir / contract.HYDRA_DIR
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(hydra_record))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(run.overrides))
