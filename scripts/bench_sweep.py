"""Sweep efficiency: how much of a sweep's wall time is spent on anything but training.

Runs a sweep through the real CLI (by default the mission command,
``python train.py -m seed=1,2,3,4,5 sae.n_features=128,512``) on a cold activation store of its
own, then reports

    efficiency = (sweep wall time) / (store build + sum over jobs of trainer.fit time)

from the store manifest's build seconds (held-out file and shards) and each run's
``metrics.json`` ``fit_time_s``. 1.0 means no overhead at all; the rest is process start-up,
model loading, W&B, held-out evaluation, CE-loss and top examples, and file writing. It also
times W&B's start-up and finish on its own (offline), which every job pays once.

    python scripts/bench_sweep.py                                # the mission command, ~7 min
    python scripts/bench_sweep.py seed=1,2 sae.n_features=128 trainer.max_epochs=1   # quicker
    python scripts/bench_sweep.py --keep outputs/bench_sweep     # keep the sweep folder

Measure on a quiet machine: another busy process makes every figure meaningless.
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSION = ["seed=1,2,3,4,5", "sae.n_features=128,512"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: the mission)")
    parser.add_argument("--keep", type=Path, help="write the sweep here and keep it")
    args = parser.parse_args()
    overrides = args.overrides or MISSION

    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    sweep_dir = args.keep.resolve() if args.keep else work / "sweep"
    if sweep_dir.exists():
        raise SystemExit(f"{sweep_dir} exists; choose a new --keep folder.")
    cache_dir = work / "cache"
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
    cache_build = sum(store_build_seconds(json.loads(m.read_text())) for m in manifests)
    runs = sorted(p.parent for p in sweep_dir.rglob("COMPLETE"))
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    if any("fit_time_s" not in m for m in metrics):
        raise SystemExit("metrics.json has no fit_time_s; this saeseeds is too old for the bench.")
    fit = [m["fit_time_s"] for m in metrics]
    job = [m["wall_time_s"] for m in metrics]
    wandb_seconds = wandb_startup_seconds()

    print(f"jobs: {len(runs)}; activation stores built: {len(manifests)}")
    print(f"sweep wall time:           {wall:8.1f} s")
    print(f"activation store build:    {cache_build:8.1f} s")
    print(f"sum of trainer.fit times:  {sum(fit):8.1f} s  (per job {min(fit):.1f}-{max(fit):.1f})")
    print(f"sum of job wall times:     {sum(job):8.1f} s  (train() from start to COMPLETE)")
    outside = wall - sum(job)
    print(f"outside jobs:              {outside:8.1f} s  (Python/Hydra start-up, model load)")
    print(f"W&B offline init+finish:   {statistics.median(wandb_seconds):8.2f} s per job (median)")
    print(f"efficiency (wall / (store build + fit)): {wall / (cache_build + sum(fit)):.3f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
