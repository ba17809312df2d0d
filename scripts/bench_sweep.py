"""Sweep efficiency and the mission ratio: how much of a sweep's wall time goes to anything but
the SAE optimisation steps.

Runs a sweep through the real CLI (by default the mission command,
``python train.py -m seed=1,2,3,4,5 sae.n_features=128,512``) on a cold activation store of its
own, then, in the same run, times the pure SAE steps of each of its jobs, and reports

    efficiency    = (sweep wall time) / (store build + sum over jobs of trainer.fit time)
    mission ratio = (sweep wall time) / (store build + sum over jobs of pure-step time)
    its floor     = (sweep wall time - sum of fit + sum of pure) / (store build + sum of pure)

from the store manifest's build seconds (held-out file and shards), each run's ``metrics.json``
``fit_time_s``, and the pure steps timed here; 1.0 means no overhead at all. The efficiency's
overhead is process start-up, model loading, W&B, held-out evaluation, CE-loss and top examples,
and file writing; the mission ratio adds what ``trainer.fit`` spends beyond the steps (Lightning,
logging, the data loader, the held-out curve, checkpoints, snapshots). It also
times W&B's start-up and finish on its own (offline), which every job pays once.

A job's pure steps are its exact optimisation step in a plain loop, without Lightning, logging,
callbacks or a data loader: the SAE built and initialised from the job's recorded config
(``.hydra/config.yaml``), Adam and the learning-rate schedule, and per step the input scale
(``cfg.json``), bf16 autocast when the job trained in ``bf16-mixed`` (``environment.json``), the
forward and its losses, the dead-latent tracker, backward, the decoder constraint, gradient
clipping, the Adam and schedule steps. All of the job's ``steps`` (``metrics.json``) are timed,
nothing extrapolated, at the torch thread count and determinism the job ran with, on the job's
own training rows read from its store (``data_provenance.activation_store_dir``) into memory as
float32 before the clock starts and taken in a random order each pass. The table shows the
held-out FVU of the SAE the loop trained beside the job's: only the batch order differs, so they
should be close, which checks that the loop still does the job's maths.

    python scripts/bench_sweep.py                          # the mission command, ~10 min
    python scripts/bench_sweep.py seed=1,2 sae.n_features=128 trainer.max_epochs=1   # quicker
    python scripts/bench_sweep.py --keep outputs/bench     # keep the sweep (its store: bench.cache)
    python scripts/bench_sweep.py --pure-only outputs/bench   # the pure steps of a kept sweep
    python scripts/bench_sweep.py --no-pure-steps          # the efficiency alone

``--keep`` also writes ``bench_sweep.json`` (wall time, store build, command) into the sweep
folder, so that ``--pure-only`` on it reports the mission ratio as well.

Measure on a quiet machine: another busy process makes every figure meaningless, the pure steps
most of all (with two or more torch threads on cores that other processes hold, OpenMP's
spin-waiting slows a tight loop of small steps several times over, more than ``trainer.fit``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSION = ["seed=1,2,3,4,5", "sae.n_features=128,512"]
BENCH_RECORD = "bench_sweep.json"
# The most training rows (float32) held in memory for the pure steps: the job's first rows, as
# many as fit in this budget (twice over: the loop shuffles a copy), so a large budget does not
# need its whole prefix in memory.
PURE_ROWS_BYTES = 2**30
PURE_PRECISIONS = ("32", "32-true", "bf16-mixed")
# A pure-loop SAE whose held-out FVU is further than this (relative) from its job's is flagged.
FVU_TOLERANCE = 0.1


def wandb_startup_seconds(rounds: int = 3) -> list[float]:
    """Seconds of one offline ``wandb.init`` + ``finish`` (what each job pays), in a subprocess."""
    code = (
        "import sys, tempfile, time, wandb\n"
        "d = tempfile.mkdtemp()\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    t = time.perf_counter()\n"
        "    run = wandb.init(mode='offline', dir=d, project='bench', reinit='finish_previous')\n"
        "    run.log({'x': 1.0}); run.finish()\n"
        "    print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(rounds)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"timing W&B failed:\n{result.stderr[-2000:]}")
    return [float(line) for line in result.stdout.split()]


def store_build_seconds(manifest: dict) -> float:
    """A store's build time: its held-out file plus every shard, as its manifest records them."""
    shards = manifest.get("shards", {}).values()
    held = manifest.get("provenance", {}).get("heldout_build_seconds", 0)
    return held + sum(record.get("build_seconds", 0) for record in shards)


def completed_runs(sweep_dir: Path) -> list[Path]:
    return sorted(path.parent for path in sweep_dir.rglob("COMPLETE"))


# ---- the sweep through the CLI ----


def run_sweep(overrides: list[str], sweep_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Run the sweep; return its wall time, store build time and command."""
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        *overrides,
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    print("$", " ".join(command[1:]), flush=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{result.stderr[-3000:]}")
    manifests = list(cache_dir.rglob("manifest.json"))
    return {
        "command": command[1:],
        "wall_s": round(wall, 3),
        "store_build_s": sum(store_build_seconds(json.loads(m.read_text())) for m in manifests),
        "stores_built": len(manifests),
        "cache_dir": str(cache_dir),
    }


def report_sweep(sweep: dict[str, Any], runs: list[Path]) -> None:
    """Today's efficiency figures: wall time against store build plus trainer.fit times."""
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    if any("fit_time_s" not in m for m in metrics):
        raise SystemExit("metrics.json has no fit_time_s; this saeseeds is too old for the bench.")
    fit = [m["fit_time_s"] for m in metrics]
    job = [m["wall_time_s"] for m in metrics]
    wall, cache_build = sweep["wall_s"], sweep["store_build_s"]
    wandb_seconds = wandb_startup_seconds()

    print(f"jobs: {len(runs)}; activation stores built: {sweep['stores_built']}")
    print(f"sweep wall time:           {wall:8.1f} s")
    print(f"activation store build:    {cache_build:8.1f} s")
    print(f"sum of trainer.fit times:  {sum(fit):8.1f} s  (per job {min(fit):.1f}-{max(fit):.1f})")
    print(f"sum of job wall times:     {sum(job):8.1f} s  (train() from start to COMPLETE)")
    outside = wall - sum(job)
    print(f"outside jobs:              {outside:8.1f} s  (Python/Hydra start-up, model load)")
    print(f"W&B offline init+finish:   {statistics.median(wandb_seconds):8.2f} s per job (median)")
    print(f"efficiency (wall / (store build + fit)): {wall / (cache_build + sum(fit)):.3f}")


# ---- the pure SAE steps of each job ----


@dataclass
class PureJob:
    """What one finished job recorded, and the time its steps take in a plain loop."""

    run: Path
    n_features: int
    seed: int
    precision: str
    steps: int
    fit_time_s: float
    heldout_fvu: float
    pure_s: float = 0.0
    pure_heldout_fvu: float = float("nan")


def job_config(run: Path) -> Any:
    """The job's composed config as it recorded it (``.hydra/config.yaml``)."""
    from omegaconf import OmegaConf

    recorded = run / ".hydra" / "config.yaml"
    if not recorded.is_file():
        raise SystemExit(f"{run} has no .hydra/config.yaml; the pure steps need the job's config.")
    return OmegaConf.load(recorded)


def training_prefix(store_dir: Path, n_rows: int, d_in: int) -> Any:
    """The job's first training rows (at most PURE_ROWS_BYTES of them), float32, read with the
    project's store reader (sha256 checked)."""
    import torch

    from saeseeds.activations.shards import TrainingRows
    from saeseeds.activations.store import ActivationStore

    rows = TrainingRows(ActivationStore(store_dir), min(n_rows, PURE_ROWS_BYTES // (4 * d_in)))
    return torch.cat([rows.read(index).float() for index in range(rows.n_shards)])


def pure_step_seconds(
    cfg: Any, job: PureJob, rows: Any, heldout: Any, input_scale: float, device: str
) -> tuple[float, float]:
    """Seconds of the job's ``steps`` optimisation steps in a plain loop, and the held-out FVU
    of the SAE they trained. ``rows``: [n, d_in] float32 training rows; ``heldout`` likewise."""
    import torch

    from saeseeds.config.validation import validate_train_config
    from saeseeds.sae import build_sae
    from saeseeds.training.metrics import evaluate_heldout
    from saeseeds.training.module import ADAM_OPTIONS, lr_factor_schedule, sae_step

    sae_config = validate_train_config(cfg)
    batch_size = int(cfg.data.batch_size)
    generator = torch.Generator().manual_seed(job.seed)
    torch.manual_seed(job.seed)
    sample = rows[torch.randperm(len(rows), generator=generator)[: sae_config.init_sample_size]]
    sae = build_sae(rows.shape[1], sae_config)
    sae.initialize(sample * input_scale, generator)
    sae.to(device).train()
    parameters = list(sae.parameters())
    lr = sae_config.lr if sae_config.lr is not None else sae.default_lr()
    optimizer = torch.optim.Adam(parameters, lr=lr, **ADAM_OPTIONS)
    schedule = lr_factor_schedule(
        job.steps, sae_config.warmup_steps, sae_config.decay_start_fraction
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    tokens_since_fired = torch.zeros(sae.n_features, dtype=torch.long, device=device)
    # Data loading is not timed: the rows are shuffled once here and each pass takes the
    # contiguous batches in a new random order (views, no copy inside the loop).
    rows = rows[torch.randperm(len(rows), generator=generator)].to(device)
    n_batches = len(rows) // batch_size
    if n_batches == 0:
        raise SystemExit(f"{job.run}: fewer training rows than data.batch_size={batch_size}.")
    passes = -(-job.steps // n_batches)
    order = torch.cat([torch.randperm(n_batches, generator=generator) for _ in range(passes)])
    starts = (order[: job.steps] * batch_size).tolist()
    bf16 = job.precision == "bf16-mixed"
    device_type = torch.device(device).type

    synchronize(device)
    started = time.perf_counter()
    for step, start in enumerate(starts):
        x = rows[start : start + batch_size] * input_scale  # [batch, d_in]
        sae.set_progress(step, job.steps)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            # The job's own step: dead mask, forward, losses and penalty, tracker update.
            loss, _ = sae_step(
                sae, x, tokens_since_fired, sae_config.dead_tokens_threshold, with_metrics=False
            )
        optimizer.zero_grad()
        loss.backward()
        sae.before_optimizer_step()
        if sae_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, sae_config.grad_clip)
        optimizer.step()
        sae.after_optimizer_step()
        scheduler.step()  # Lightning steps a per-step schedule after the batch
    synchronize(device)
    seconds = time.perf_counter() - started

    sae.eval()  # the held-out FVU as the job's metrics.json computes it
    metrics, _, _ = evaluate_heldout(sae, heldout.to(device) * input_scale, batch_size)
    return seconds, metrics["fvu"]


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pure_steps(runs: list[Path]) -> list[PureJob]:
    """Time the pure steps of each finished job, one after the other, in this process; each
    job's rows are read from its store before its clock starts."""
    import torch

    from saeseeds.activations.store import ActivationStore

    jobs: list[PureJob] = []
    loaded_key, rows, heldout = None, None, None
    for run in runs:
        cfg = job_config(run)
        metrics = json.loads((run / "metrics.json").read_text())
        environment = json.loads((run / "environment.json").read_text())
        sae_cfg = json.loads((run / "cfg.json").read_text())
        choice = environment.get("precision_choice") or {}
        precision = str(choice.get("precision", environment.get("precision")))
        if precision not in PURE_PRECISIONS:
            raise SystemExit(
                f"{run} trained in precision {precision!r}; the pure-step loop drives "
                f"{PURE_PRECISIONS} only."
            )
        store_dir = environment.get("data_provenance", {}).get("activation_store_dir")
        if not store_dir or not (Path(store_dir) / "manifest.json").is_file():
            raise SystemExit(
                f"{run} trained from no activation store that is still on disk "
                f"(data_provenance.activation_store_dir={store_dir!r}); the pure steps read their "
                "batches from one (use --no-pure-steps for the efficiency alone)."
            )
        job = PureJob(
            run=run,
            n_features=int(sae_cfg["n_features"]),
            seed=int(cfg.seed),
            precision=precision,
            steps=int(metrics["steps"]),
            fit_time_s=float(metrics["fit_time_s"]),
            heldout_fvu=float(metrics["fvu"]),
        )
        key = (store_dir, int(cfg.data.n_tokens))
        if key != loaded_key:  # once for the jobs on the same rows (one set held at a time)
            heldout = ActivationStore(store_dir).heldout()["activations"].float()
            rows = training_prefix(Path(store_dir), key[1], int(sae_cfg["d_in"]))
            loaded_key = key
        torch.set_num_threads(int(environment["platform"]["torch_threads"]))
        deterministic = cfg.trainer.deterministic
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
        input_scale = float(sae_cfg["normalization"]["input_scale"])
        job.pure_s, job.pure_heldout_fvu = pure_step_seconds(
            cfg, job, rows, heldout, input_scale, str(environment.get("device", "cpu"))
        )
        print(
            f"  pure steps of {run.name}: {job.steps} steps in {job.pure_s:.2f} s "
            f"({job.precision}, {torch.get_num_threads()} threads)",
            flush=True,
        )
        jobs.append(job)
    return jobs


def report_pure_steps(jobs: list[PureJob], sweep: dict[str, Any] | None) -> None:
    """The per-job table, the sum of pure-step times and the mission ratio."""
    print()
    print(
        "n_features  seed  precision   steps  fit_time_s  pure_s  fit/pure  "
        "held-out FVU job / pure loop"
    )
    for job in sorted(jobs, key=lambda job: (job.n_features, job.seed)):
        # Only the batch order differs, so the two SAEs should be about as good.
        apart = abs(job.pure_heldout_fvu - job.heldout_fvu) > FVU_TOLERANCE * job.heldout_fvu
        print(
            f"{job.n_features:10d}  {job.seed:4d}  {job.precision:10s}  {job.steps:6d}  "
            f"{job.fit_time_s:10.2f}  {job.pure_s:6.2f}  {job.fit_time_s / job.pure_s:8.2f}  "
            f"{job.heldout_fvu:.4f} / {job.pure_heldout_fvu:.4f}"
            + ("  <- far apart: is the loop still the job's step?" if apart else "")
        )
    pure = sum(job.pure_s for job in jobs)
    fit = sum(job.fit_time_s for job in jobs)
    print(f"sum of pure-step times:    {pure:8.1f} s  (trainer.fit / pure steps: {fit / pure:.2f})")
    if sweep is None:
        print(f"no mission ratio: no {BENCH_RECORD} in the sweep folder, so no sweep wall time.")
        return
    ratio = sweep["wall_s"] / (sweep["store_build_s"] + pure)
    print(f"mission ratio (wall / (store build + pure steps)): {ratio:.3f}  (target <= 1.3)")
    # What the rest of the sweep alone sets: the ratio had trainer.fit taken the pure steps' time.
    floor = (sweep["wall_s"] - fit + pure) / (sweep["store_build_s"] + pure)
    print(f"  the same with trainer.fit as fast as the pure steps: {floor:.3f}")


# ---- the command line ----


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: the mission)")
    parser.add_argument(
        "--keep", type=Path, help="write the sweep here and keep it (its store in KEEP.cache)"
    )
    parser.add_argument(
        "--pure-steps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the sweep, time the pure SAE steps of each job (default: on)",
    )
    parser.add_argument(
        "--pure-only",
        type=Path,
        metavar="SWEEP_DIR",
        help="run no sweep: time the pure steps of the finished jobs in SWEEP_DIR",
    )
    args = parser.parse_args()

    if args.pure_only is not None:
        runs = completed_runs(args.pure_only)
        if not runs:
            raise SystemExit(f"{args.pure_only} holds no finished job (no COMPLETE marker).")
        record = args.pure_only / BENCH_RECORD
        sweep = json.loads(record.read_text()) if record.is_file() else None
        report_pure_steps(time_pure_steps(runs), sweep)
        return

    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    sweep_dir = args.keep.resolve() if args.keep else work / "sweep"
    cache_dir = sweep_dir.with_name(sweep_dir.name + ".cache") if args.keep else work / "cache"
    for folder in (sweep_dir, cache_dir):
        if folder.exists():
            raise SystemExit(f"{folder} exists; choose a new --keep folder.")
    try:
        sweep = run_sweep(args.overrides or MISSION, sweep_dir, cache_dir)
        runs = completed_runs(sweep_dir)
        if args.keep:
            (sweep_dir / BENCH_RECORD).write_text(json.dumps(sweep, indent=2) + "\n")
        report_sweep(sweep, runs)
        if args.pure_steps:
            report_pure_steps(time_pure_steps(runs), sweep)
    finally:
        if args.keep:
            print(f"kept: the sweep in {sweep_dir}, its store in {cache_dir}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
