"""Wall time of S single-seed jobs vs one S-seed job (``'seeds=[...]' order_seed=0``) of the same
config, in one process, and a check that both wrote the same weights.

    python scripts/bench_multiseed.py                                # synthetic, d_in 576, S=5
    python scripts/bench_multiseed.py --n-features 128 512 --seeds 5 --threads 2
    python scripts/bench_multiseed.py --data pydocs --epochs 8       # the default experiment

For each size it runs the S jobs ``seed=1..S order_seed=0`` one after another, then the one job
``seeds=[1..S] order_seed=0`` (``--multi-first`` swaps the order), each with ``logger=none``, and
reports the sum of the single jobs' ``fit_time_s`` (seconds in ``trainer.fit``) and wall times
against the multi-seed job's. Data loading is in the wall time only: with ``--data pydocs`` the
activation store is built (or read) before the first timed job, and every job reads it from
disk as a sweep's jobs do. The script itself adds no load, but timings on a shared machine are
only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from saeseeds import contract
from saeseeds.config import register_configs
from saeseeds.training.job import run_job
from saeseeds.training.run import build_source, train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.data == "synthetic":
        return [
            "data=synthetic",
            f"data.d_in={args.d_in}",
            f"data.n_true_features={4 * args.d_in}",
            f"data.n_tokens={args.n_tokens}",
            f"data.batch_size={args.batch_size}",
        ]
    return [f"data={args.data}"]


def bench_size(args: argparse.Namespace, n_features: int, root: Path) -> dict[str, float]:
    seeds = list(range(1, args.seeds + 1))
    common = [
        *data_overrides(args),
        f"sae.n_features={n_features}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "order_seed=0",
    ]
    times: dict[str, float] = {}

    def singles() -> None:
        started, fit = time.perf_counter(), 0.0
        for seed in seeds:
            metrics = train(compose_config([*common, f"seed={seed}"], root / f"single{seed}"))
            fit += metrics["fit_time_s"]
        times["single_wall_s"], times["single_fit_s"] = time.perf_counter() - started, fit

    def multi() -> None:
        started = time.perf_counter()
        metrics = run_job(compose_config([*common, f"seeds={seeds}"], root / "multi"))
        times["multi_wall_s"] = time.perf_counter() - started
        times["multi_fit_s"] = metrics[seeds[0]]["fit_time_s"]

    if args.data != "synthetic":  # build or read the activation cache before any timing
        build_source(compose_config([*common, "seed=1"], root / "warmup")).load()
    for step in (multi, singles) if args.multi_first else (singles, multi):
        step()
    for seed in seeds:
        own = (root / f"single{seed}" / contract.WEIGHTS_FILE).read_bytes()
        together = (root / "multi" / f"seed={seed}" / contract.WEIGHTS_FILE).read_bytes()
        if own != together:
            raise SystemExit(f"n_features={n_features}, seed={seed}: the weights differ")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic", help="synthetic, or a data option: pydocs")
    parser.add_argument("--n-features", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--seeds", type=int, default=5, help="S: seeds 1..S")
    parser.add_argument("--d-in", type=int, default=576, help="synthetic data only")
    parser.add_argument("--n-tokens", type=int, default=32_768, help="synthetic data only")
    parser.add_argument("--batch-size", type=int, default=1024, help="synthetic data only")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (as threads=N)"
    )
    parser.add_argument("--multi-first", action="store_true", help="time the S-seed job first")
    args = parser.parse_args()
    register_configs()
    if args.threads:  # what the `threads` option does in a Hydra job
        torch.set_num_threads(args.threads)
    print(
        f"data={args.data} seeds=1..{args.seeds} epochs={args.epochs} threads={args.threads}\n"
        "| n_features | S single jobs: fit s | wall s | one S-seed job: fit s | wall s | "
        "speed-up (fit) | speed-up (wall) |\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    for n_features in args.n_features:
        with tempfile.TemporaryDirectory(prefix="bench_multiseed_") as folder:
            t = bench_size(args, n_features, Path(folder))
        print(
            f"| {n_features} | {t['single_fit_s']:.1f} | {t['single_wall_s']:.1f} | "
            f"{t['multi_fit_s']:.1f} | {t['multi_wall_s']:.1f} | "
            f"{t['single_fit_s'] / t['multi_fit_s']:.2f}x | "
            f"{t['single_wall_s'] / t['multi_wall_s']:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
