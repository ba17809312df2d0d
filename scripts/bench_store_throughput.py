"""Training throughput from the activation store against the old in-memory path.

Builds a store of random activations (float16 shards on disk, written by the store's own code),
then trains the same Top-K SAE for the same steps two ways, each in ``trainer.fit``:

- **store**: the real data path: shards read one at a time into a window (the next window loaded
  in a background thread), each batch gathered from the window and converted to float32;
- **memory**: the path before the store, rebuilt here as the baseline: every training row in one
  float32 tensor, each batch a random set of rows (an epoch is a ``randperm``).

Each fit runs in its own process. It prints tokens/s for both and their ratio (target: store /
memory >= 0.9) per dictionary size. Run it on a quiet machine: on an oversubscribed one, torch's
CPU threads wait on each other and the timings say more about the load than about the data path.

    python scripts/bench_store_throughput.py        # 1M tokens, d_in 576, 512 and 16384 features
    python scripts/bench_store_throughput.py --tokens 262144 --steps 50 --n-features 512
    python scripts/bench_store_throughput.py --no-prefetch   # the store without prefetching
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from saeseeds.activations.shards import TrainingRows
from saeseeds.activations.store_build import ensure_store
from saeseeds.sae import build_sae
from saeseeds.sae.topk import TopKConfig
from saeseeds.training.datamodule import ActivationDataModule, RowBatches, training_rows
from saeseeds.training.module import SAETrainingModule


class RandomBuilder:
    """A store builder whose shards are Gaussian rows drawn from (seed, shard)."""

    label = "random"

    def __init__(self, d_in: int, rows_per_shard: int):
        self.d_in, self.rows_per_shard, self.dtype = d_in, rows_per_shard, torch.float16
        self.key_fields = {"bench": "random", "d_in": d_in, "shard_tokens": rows_per_shard}

    def _rows(self, count: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(count, self.d_in, generator=generator).to(self.dtype)

    def heldout(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"activations": self._rows(4096, -1)}, {}

    def available_rows(self, limit: int) -> int:
        return limit

    def too_few_rows(self, available: int, needed: int) -> Exception:
        return RuntimeError("unreachable")

    def shard(self, index: int) -> torch.Tensor:
        return self._rows(self.rows_per_shard, index)

    def provenance(self) -> dict[str, Any]:
        return {}


class RandomRowBatches(Sampler[torch.Tensor]):
    """The old order: epoch e is randperm(N) seeded by (seed, e), cut into batches."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed

    def __len__(self) -> int:
        return self.n_rows // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n_rows, generator=torch.Generator().manual_seed(self.seed))
        for index in range(len(self)):
            yield order[index * self.batch_size : (index + 1) * self.batch_size]


class InMemory(L.LightningDataModule):
    def __init__(self, rows: torch.Tensor, heldout: torch.Tensor, batch_size: int):
        super().__init__()
        self.rows, self.heldout, self.batch_size = rows, heldout, batch_size

    def train_dataloader(self) -> DataLoader:
        sampler = RandomRowBatches(len(self.rows), self.batch_size, seed=0)
        return DataLoader(RowBatches(self.rows), sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:  # as the old data module had (not run here)
        batches = [torch.arange(len(self.heldout))]
        return DataLoader(RowBatches(self.heldout), sampler=batches, batch_size=None)


def fit_seconds(datamodule: L.LightningDataModule, d_in: int, args, n_features: int) -> float:
    sae = build_sae(d_in, TopKConfig(n_features=n_features, k=32))
    sae.initialize(torch.randn(4096, d_in), torch.Generator().manual_seed(0))
    module = SAETrainingModule(
        sae,
        lr=2e-4,
        input_scale=1.0,
        warmup_steps=10,
        decay_start_fraction=0.8,
        dead_tokens_threshold=10_000_000,
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> float:
    """One fit (``args.measure``: store or memory) on the store in ``args.work_dir``."""
    builder = RandomBuilder(args.d_in, args.shard_tokens)
    store, _ = ensure_store(args.work_dir, builder, args.tokens, progress=False)
    train = TrainingRows(store, args.tokens)
    heldout = store.heldout()["activations"].float()
    (n_features,) = args.n_features
    if args.measure == "memory":
        in_memory = torch.cat([train.read(i) for i in range(train.n_shards)]).float()
        return fit_seconds(
            InMemory(in_memory, heldout, args.batch_size), args.d_in, args, n_features
        )
    rows = training_rows(
        train, args.batch_size, args.window_shards, seed=0, prefetch=not args.no_prefetch
    )
    datamodule = ActivationDataModule(rows, heldout, args.batch_size)
    return fit_seconds(datamodule, args.d_in, args, n_features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--shard-tokens", type=int, default=65_536)
    parser.add_argument("--window-shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-features", type=int, nargs="+", default=[512, 16384])
    parser.add_argument("--no-prefetch", action="store_true")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--measure", choices=("store", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps({"seconds": measure(args)}))
        return

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="saeseeds-throughput-"))
    # Each fit runs in a process of its own, as the app's jobs do: a thread that has run torch
    # (the store's prefetching) changes how later work in the same process is scheduled.
    common = [
        sys.executable, __file__, "--work-dir", str(work), "--tokens", str(args.tokens),
        "--d-in", str(args.d_in), "--shard-tokens", str(args.shard_tokens),
        "--window-shards", str(args.window_shards), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), *(["--no-prefetch"] if args.no_prefetch else []),
    ]  # fmt: skip
    results = []
    try:
        ensure_store(work, RandomBuilder(args.d_in, args.shard_tokens), args.tokens)
        for n_features in args.n_features:
            seconds = {}
            for path in ("memory", "store"):
                command = [*common, "--n-features", str(n_features), "--measure", path]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-3000:])
                seconds[path] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
            results.append((n_features, seconds["store"], seconds["memory"]))
            print(f"n_features={n_features}: store {seconds['store']:.1f} s, "
                  f"memory {seconds['memory']:.1f} s", flush=True)  # fmt: skip
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    tokens = args.steps * args.batch_size
    print(f"\n{args.steps} steps of {args.batch_size} tokens, d_in {args.d_in}, {args.tokens:,} "
          f"training tokens, windows of {args.window_shards} x {args.shard_tokens} rows"
          f"{' (no prefetch)' if args.no_prefetch else ''}")  # fmt: skip
    print(f"{'n_features':>10} | {'store tok/s':>12} | {'memory tok/s':>12} | {'store/memory':>12}")
    print(f"{'-' * 10}-+-{'-' * 12}-+-{'-' * 12}-+-{'-' * 12}")
    for n_features, from_store, from_memory in results:
        print(f"{n_features:>10} | {tokens / from_store:>12,.0f} | {tokens / from_memory:>12,.0f} "
              f"| {from_memory / from_store:>12.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
