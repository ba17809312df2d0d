"""Which storage dtype the store should default to: SAEs trained on a float16 (and bfloat16) store
against the same SAEs trained on a float32 store.

For each seed it trains the same job (same seed, same batch order) on each dtype's store, then
evaluates every SAE on the float32 store's held-out activations (so the test data do not change
with the dtype) and matches each low-precision SAE's decoder directions to the float32 SAE's of
the same seed (Hungarian matching of cosines). For scale it also matches float32 SAEs of different
seeds: a dtype that does not matter leaves its SAE much closer to the float32 one than another
seed is.

    python scripts/bench_store_dtype.py                                  # the defaults, 3 seeds
    python scripts/bench_store_dtype.py --seeds 1,2 sae.n_features=512 trainer.max_epochs=2
    python scripts/bench_store_dtype.py --dtypes float32,float16,bfloat16

Prints a table of held-out FVU and median matched cosine per dtype.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from safetensors.torch import load_file

from saeseeds.analysis.matching import match
from saeseeds.config import register_configs
from saeseeds.config.validation import sae_config_of
from saeseeds.sae import build_sae
from saeseeds.training.metrics import evaluate_heldout
from saeseeds.training.run import build_source, train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def load_sae(run_dir: Path, cfg: DictConfig, d_in: int) -> torch.nn.Module:
    sae = build_sae(d_in, sae_config_of(cfg.sae))
    sae.load_state_dict(load_file(str(run_dir / "sae_weights.safetensors")))
    return sae.eval()


def directions(sae: torch.nn.Module) -> np.ndarray:
    decoder = sae.W_dec.detach().double()
    return (decoder / decoder.norm(dim=1, keepdim=True)).numpy()


def median_matched_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(match((a @ b.T).astype(np.float32)).cosines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated")
    parser.add_argument("--dtypes", default="float32,float16", help="comma-separated")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="train.py overrides (model, data, sae, ...)")
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.dtypes = args.dtypes.split(",")
    if args.dtypes[0] != "float32":
        raise SystemExit("--dtypes must start with float32, the reference")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="saeseeds-dtype-"))
    common = [*args.overrides, "logger=none", "trainer.enable_progress_bar=false", "order_seed=0"]
    common.append(f"paths.cache_dir={work / 'cache'}")
    try:
        reference = compose_config([*common, "data.store_dtype=float32"], work / "reference")
        heldout = build_source(reference).load().heldout  # float32 store's held-out rows
        saes: dict[str, dict[int, torch.nn.Module]] = {}
        fvu: dict[str, dict[int, float]] = {}
        for dtype in args.dtypes:
            saes[dtype], fvu[dtype] = {}, {}
            for seed in args.seeds:
                run_dir = work / f"{dtype}-seed{seed}"
                cfg = compose_config(
                    [*common, f"data.store_dtype={dtype}", f"seed={seed}"], run_dir
                )
                train(cfg)
                sae = load_sae(run_dir, cfg, heldout.shape[1])
                saes[dtype][seed] = sae
                fvu[dtype][seed] = evaluate_heldout(sae, heldout, 4096)[0]["fvu"]
                print(f"{dtype} seed {seed}: held-out FVU {fvu[dtype][seed]:.5f}", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    reference_dirs = {seed: directions(sae) for seed, sae in saes["float32"].items()}
    seeds = args.seeds
    across_seeds = [
        median_matched_cosine(reference_dirs[a], reference_dirs[b])
        for i, a in enumerate(seeds)
        for b in seeds[i + 1 :]
    ]
    print(f"\n{'store dtype':<12} | {'held-out FVU':>12} | {'FVU - fp32':>10} | "
          f"{'median matched cos vs fp32 SAE of the same seed':>48}")  # fmt: skip
    print(f"{'-' * 12}-+-{'-' * 12}-+-{'-' * 10}-+-{'-' * 48}")
    for dtype in args.dtypes:
        mean_fvu = statistics.mean(fvu[dtype].values())
        delta = mean_fvu - statistics.mean(fvu["float32"].values())
        cosines = [
            median_matched_cosine(directions(saes[dtype][seed]), reference_dirs[seed])
            for seed in seeds
        ]
        shown = ", ".join(f"{c:.4f}" for c in cosines)
        print(f"{dtype:<12} | {mean_fvu:>12.5f} | {delta:>+10.5f} | {shown:>48}")
    if across_seeds:
        shown = ", ".join(f"{c:.4f}" for c in across_seeds)
        print(f"\nfor scale, float32 SAEs of different seeds: median matched cosine {shown}")


if __name__ == "__main__":
    main()
