"""A multi-seed job (``'seeds=[1,2,3]' order_seed=N``): the folder each seed writes, the config
its own job would record there, and what the job does with each folder.

Every seed's folder is the one its own job (``seed=S order_seed=N``, the other overrides the
same) would write. Inside a multirun it is named from that job's overrides (``seeds=[...]``
replaced by ``seed=S``, with the default ``hydra.sweep.subdir`` rule) in the same sweep folder;
in a single run it is ``<hydra.run.dir>/seed=S``. The job's own Hydra folder keeps its log and its
checkpoint (``checkpoints/last.ckpt``, every seed together); no per-seed folder has checkpoints.

Per seed: a folder complete with this config is skipped (with another config the job is
refused, as a single job is); a folder holding an interrupted single-seed run is refused (finish
it with its own job, or delete it); any other seed is trained. The seeds left are trained in one
fit (:mod:`saeseeds.training.multiseed`). The job's own checkpoint is resumed as a single job
resumes its (``resume=true``, or by itself inside a multirun), with the seeds it holds; those
already complete are trained along but not written again. Inside a multirun each seed has its
own record in ``.saeseeds_jobs/``, so the sweep summary and the analysis count seeds, not jobs.
This module imports neither torch nor Lightning until a job is accepted.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from saeseeds import contract
from saeseeds.config import job_subdir
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.io import atomic_write_text, job_lock, remove_folder_if_only
from saeseeds.training.job import (
    ACCEPTED_LEFTOVERS,
    HYDRA_LEFTOVERS,
    JobRecord,
    describe_error,
    hydra_config,
    is_multirun,
    remove_stale_temporaries,
    resolved_run_config,
)
from saeseeds.training.resume import RESUME, SKIP, START, plan_complete

log = logging.getLogger("saeseeds")


@dataclass
class SeedRun:
    """One seed of the job: its folder and the config and overrides of its own job."""

    seed: int
    run_dir: Path
    cfg: DictConfig  # as its own job composes it; paths.output_dir is run_dir
    overrides: list[str]
    run_config: dict[str, Any]
    action: str = START


@dataclass
class SeedsPlan:
    """What the job does: ``train_seeds`` in one fit (from ``checkpoint`` when resuming), then
    the folders of the runs not skipped."""

    job_dir: Path
    job_config: dict[str, Any]  # the job's run config without its seed; checked on resume
    runs: list[SeedRun]
    train_seeds: list[int] = field(default_factory=list)
    ckpt_path: Path | None = None
    checkpoint: dict[str, Any] | None = None

    @property
    def to_write(self) -> list[SeedRun]:
        return [run for run in self.runs if run.action != SKIP]


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


def seed_runs(cfg: DictConfig, hydra_cfg: Any | None) -> list[SeedRun]:
    """Every seed's folder, config and overrides, in the order of ``seeds``."""
    job_dir = Path(str(cfg.paths.output_dir))
    task = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
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


def plan_seeds(cfg: DictConfig, runs: list[SeedRun], auto_resume: bool) -> SeedsPlan:
    """Decide each seed's folder and the job's checkpoint; raises :class:`ConfigError` when the
    job must not run."""
    job_dir = Path(str(cfg.paths.output_dir))
    job_config = contract.without_keys(resolved_run_config(cfg), ("seed",))
    plan = SeedsPlan(job_dir, job_config, runs)
    for run in runs:
        if (run.run_dir / contract.COMPLETE_MARKER).exists():
            complete = plan_complete(run.run_dir, run.run_config)
            run.action = complete.action
            if complete.damaged is not None:
                log.warning(
                    "%s is not complete: %s; training it again.", run.run_dir, complete.damaged
                )
        elif (run.run_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT).is_file():
            raise ConfigError(
                f"{run.run_dir} holds an interrupted run of seed {run.seed} trained by its own "
                f"job; finish it with that job (seed={run.seed} resume=true), or delete the "
                "folder to train it in this one."
            )
    todo = [run.seed for run in runs if run.action != SKIP]
    if not todo:
        return plan
    last = job_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT
    if not last.is_file():
        if cfg.resume and not auto_resume:
            raise ConfigError(
                f"resume=true but {last} does not exist. Point hydra.run.dir at the interrupted "
                "multi-seed job's folder."
            )
        plan.train_seeds = todo
        return plan
    if not (cfg.resume or auto_resume):
        raise ConfigError(
            f"{job_dir} holds an interrupted multi-seed job ({last}); continue it with "
            "resume=true, or choose a new output folder (hydra.run.dir=...)."
        )
    from saeseeds.training.checkpoint_io import RECORD_KEY, check_config, read_checkpoint

    checkpoint = read_checkpoint(last)
    check_config(checkpoint, job_config, str(last))
    record = checkpoint.get(RECORD_KEY)
    saved = record.get("seeds") if isinstance(record, dict) else None
    if not isinstance(saved, list) or not set(todo) <= set(saved):
        raise ConfigError(
            f"{last} holds the seeds {saved}, but this job still has to train {todo}. Resume "
            "with the seeds of the interrupted job, or choose a new output folder."
        )
    plan.train_seeds, plan.ckpt_path, plan.checkpoint = [int(s) for s in saved], last, checkpoint
    for run in plan.to_write:
        run.action = RESUME
    return plan


def write_seed_hydra_files(run: SeedRun, cfg: DictConfig, hydra_cfg: Any | None) -> None:
    """``.hydra/`` of the seed's folder, as its own job would have written it."""
    from hydra.core.hydra_config import HydraConfig

    if hydra_cfg is None or hydra_cfg.output_subdir is not None:
        return  # not a Hydra run, or Hydra wrote the job's own into the job's folder
    # A plain copy: Hydra marks parts of its own config read-only.
    hydra_record = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))
    with open_dict(hydra_record):
        hydra_record.hydra.overrides.task = run.overrides
        hydra_record.hydra.runtime.output_dir = str(run.run_dir.absolute())
        naming = hydra_cfg.job.config.override_dirname
        hydra_record.hydra.job.override_dirname = override_dirname(
            run.overrides, list(naming.exclude_keys), naming.item_sep, naming.kv_sep
        )
    hydra_dir = run.run_dir / contract.HYDRA_DIR
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(seed_config(cfg, run.seed)))
    atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(hydra_record))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(run.overrides))


def is_fresh(folder: Path) -> bool:
    return folder.is_dir() and {entry.name for entry in folder.iterdir()} <= HYDRA_LEFTOVERS


def run_seeds_job(
    cfg: DictConfig, extra_callbacks: list[Any] | None = None
) -> dict[int, dict[str, Any]]:
    """Run a multi-seed job; returns the metrics of the seeds it wrote. Raises what it raised.
    ``extra_callbacks``: Lightning callbacks added to the fit (tests)."""
    hydra_cfg = hydra_config()
    multirun = is_multirun(hydra_cfg)
    job_dir = Path(str(cfg.paths.output_dir))
    fresh_job = is_fresh(job_dir)
    try:
        validate_train_config(cfg)
        check_no_seed_override(hydra_cfg)
        runs = seed_runs(cfg, hydra_cfg)
    except BaseException as error:
        if multirun:  # no seed's record can be named: one record for the job
            JobRecord(hydra_cfg, job_dir, None).write(
                outcome="failed", reason=describe_error(error)
            )
        if fresh_job:
            remove_folder_if_only(job_dir, HYDRA_LEFTOVERS)
        raise
    records: dict[int, JobRecord] = {}
    for run in runs if multirun else []:
        records[run.seed] = JobRecord(hydra_cfg, run.run_dir, run.seed)
        records[run.seed].payload["overrides"] = run.overrides
        sha = contract.config_sha256(run.run_config)
        records[run.seed].write(config=run.run_config, config_sha256=sha)
    fresh = {run.seed for run in runs if not run.run_dir.exists()}
    plan: SeedsPlan | None = None
    try:
        plan = plan_seeds(cfg, runs, auto_resume=multirun)
        for run in runs:
            if run.seed in records:
                records[run.seed].write(action=run.action)
                if run.action == SKIP:
                    records[run.seed].write(outcome="skipped")
        if not plan.train_seeds:
            return {}
        with contextlib.ExitStack() as owned:  # the job's folder and each folder it writes
            for folder in [job_dir, *(run.run_dir for run in plan.to_write)]:
                owned.enter_context(job_lock(folder))
            remove_stale_temporaries(job_dir)
            for run in plan.to_write:
                if run.action == START:  # a damaged complete folder is no longer complete
                    (run.run_dir / contract.COMPLETE_MARKER).unlink(missing_ok=True)
                remove_stale_temporaries(run.run_dir)
                write_seed_hydra_files(run, cfg, hydra_cfg)
            from saeseeds.training.multiseed import train_seeds  # Lightning: accepted jobs only

            metrics = train_seeds(cfg, plan, extra_callbacks)
    except SystemExit as stop:  # a stop signal (Preempted), or Lightning's exit after Ctrl-C
        preempted = getattr(stop, "signum", None) is not None
        reason = str(stop) if preempted else f"interrupted (exit status {stop.code})"
        for seed in [run.seed for run in plan.to_write] if plan else records:
            if seed in records:
                records[seed].write(
                    outcome="preempted" if preempted else "interrupted", reason=reason
                )
        raise
    except BaseException as error:
        for run in runs:
            if run.action != SKIP and run.seed in records:
                records[run.seed].write(outcome="failed", reason=describe_error(error))
            if run.seed in fresh:  # nothing in it predates this command
                remove_folder_if_only(run.run_dir, ACCEPTED_LEFTOVERS)
        if fresh_job:
            remove_folder_if_only(job_dir, ACCEPTED_LEFTOVERS)
        raise
    for run in plan.to_write:
        if run.seed in records:
            records[run.seed].write(outcome="resumed" if run.action == RESUME else "started")
    return metrics
