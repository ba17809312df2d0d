"""Training throughput from the activation store against the old in-memory path.

Builds a store of random activations (float16 shards on disk, written by the store's own code),
then trains the same Top-K SAE for the same steps on the same batches two ways, each in
``trainer.fit``:

- **store**: the real data path: shards read one at a time into a window (the next window loaded
  in a background thread), each batch gathered from the window and converted to float32;
- **memory**: the path before the store, rebuilt here as the baseline: every training row in one
  float32 tensor, each batch gathered from it. It serves exactly the store path's batches (the
  rows of each step, in order), so both fits do the same work and end with the same weights,
  which the script checks.

Like for like: each fit runs in a process of its own with the same torch threads; both
initialise the SAE from the same sample of the rows training reads first, before the clock
starts, as ``train.py`` does (for the store, that loads the first window; for memory, every row
is loaded); the clock covers ``trainer.fit`` only, and the time to have the data ready is printed
beside it. ``--repeats R`` alternates the two paths R times (memory, store, memory, store, ...)
and reports the median of each. It prints tokens/s for both and their ratio (target: store /
memory >= 0.9) per dictionary size. Run it on a quiet machine: on an oversubscribed one, torch's
CPU threads wait on each other and the timings say more about the load than about the data path.

    python scripts/bench_store_throughput.py        # 1M tokens, d_in 576, 512 and 16384 features
    python scripts/bench_store_throughput.py --tokens 262144 --steps 50 --n-features 512
    python scripts/bench_store_throughput.py --no-prefetch   # the store without prefetching
    python scripts/bench_store_throughput.py --feed-only --steps 1000   # batches alone, no SAE
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import statistics
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
from saeseeds.training.batch_order import BatchOrder, BlockEnds, Window, blocks_from
from saeseeds.training.datamodule import (
    LONGEST_BLOCK,
    ActivationDataModule,
    WindowedRows,
    init_sample,
    planned_steps,
)
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


def window_positions(order: BatchOrder, window: Window) -> torch.Tensor:  # [window.rows]
    """The training row (index in the prefix) at each position of ``window``'s shards, read one
    after another."""
    firsts = [0, *itertools.accumulate(order.shard_rows)]
    return torch.cat([torch.arange(firsts[shard], firsts[shard + 1]) for shard in window.shards])


class StoreOrderBatches(Sampler[list[torch.Tensor]]):
    """The training rows of every batch the store path serves, epoch after epoch, in the blocks
    of steps it serves them in."""

    def __init__(self, order: BatchOrder, ends: BlockEnds):
        self.order, self.ends, self.epoch = order, ends, 0

    def __iter__(self):
        epoch_order = torch.cat(
            [
                window_positions(self.order, window)[self.order.row_order(self.epoch, window)]
                for window in self.order.windows(self.epoch)
            ]
        )
        first_step = self.epoch * self.order.steps_per_epoch
        self.epoch += 1
        size = self.order.batch_size
        for block in blocks_from(self.order, first_step, self.ends):
            batches = range(block.first, block.first + block.count)
            yield [epoch_order[index * size : (index + 1) * size] for index in batches]


class RowBatches(torch.utils.data.Dataset):
    """Indexing with a block's row indices returns its whole batches (no per-row collation)."""

    def __init__(self, rows: torch.Tensor):  # [n_rows, d_in]
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, block: list[torch.Tensor]) -> list[torch.Tensor]:  # [batch, d_in] each
        return [self.rows[indices] for indices in block]


class InMemory(L.LightningDataModule):
    def __init__(self, rows: torch.Tensor, order: BatchOrder):
        super().__init__()
        self.rows, self.order = rows, order

    def planned_steps(self) -> int:
        return planned_steps(self.trainer, self.order.steps_per_epoch)

    def train_dataloader(self) -> DataLoader:
        # The blocks of steps the store path's data module serves (no checkpoints or fractions).
        ends = BlockEnds(
            every=(self.trainer.log_every_n_steps,),
            total_steps=self.planned_steps(),
            longest=LONGEST_BLOCK,
        )
        sampler = StoreOrderBatches(self.order, ends)
        return DataLoader(RowBatches(self.rows), sampler=sampler, batch_size=None)


def fit(datamodule: L.LightningDataModule, sample: torch.Tensor, args) -> tuple[float, str]:
    """(seconds of ``trainer.fit``, sha256 of the trained weights)."""
    (n_features,) = args.n_features
    sae = build_sae(args.d_in, TopKConfig(n_features=n_features, k=32))
    sae.initialize(sample, torch.Generator().manual_seed(0))
    module = SAETrainingModule(
        [sae],
        [0],
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
        accelerator="cpu",
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode() + tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return seconds, digest.hexdigest()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One fit (``args.measure``: store or memory) on the store in ``args.work_dir``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    builder = RandomBuilder(args.d_in, args.shard_tokens)
    store, _ = ensure_store(args.work_dir, builder, args.tokens, progress=False)
    train = TrainingRows(store, args.tokens)
    order = BatchOrder(train.used_rows, args.batch_size, args.window_shards, seed=0)
    first_window = order.windows(0)[0]
    picked = torch.randperm(first_window.rows, generator=torch.Generator().manual_seed(0))[:4096]
    started = time.perf_counter()
    if args.measure == "memory":
        in_memory = torch.cat([train.read(i) for i in range(train.n_shards)]).float()
        sample = in_memory[window_positions(order, first_window)[picked]]
        datamodule = InMemory(in_memory, order)
    else:
        rows = WindowedRows(train, order, prefetch=not args.no_prefetch)
        sample = init_sample(rows, 4096, torch.Generator().manual_seed(0))
        datamodule = ActivationDataModule(rows, args.batch_size)
    ready = time.perf_counter() - started
    seconds, weights = fit(datamodule, sample, args)
    return {
        "seconds": seconds,
        "ready": ready,
        "weights": weights,
        "threads": torch.get_num_threads(),
    }


def feed_rate(work: Path, args: argparse.Namespace) -> float:
    """Tokens/s of float32 batches that the store path delivers with no SAE behind it (the
    window loads, each batch's gather and conversion): the most this CPU can feed a faster
    device, a GPU. Training gathers each batch in its own thread, between steps."""
    if args.threads:
        torch.set_num_threads(args.threads)
    store, _ = ensure_store(work, RandomBuilder(args.d_in, args.shard_tokens), args.tokens)
    train = TrainingRows(store, args.tokens)
    order = BatchOrder(train.used_rows, args.batch_size, args.window_shards, seed=0)
    rows = WindowedRows(train, order, prefetch=not args.no_prefetch)
    try:
        rows.window(0, order.windows(0)[0])  # loaded before the clock, as training does
        started = time.perf_counter()
        for step in range(args.steps):
            rows[divmod(step, len(rows))]
        seconds = time.perf_counter() - started
    finally:
        rows.close()
    return args.steps * args.batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--shard-tokens", type=int, default=65_536)
    parser.add_argument("--window-shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-features", type=int, nargs="+", default=[512, 16384])
    parser.add_argument("--repeats", type=int, default=1, help="fits of each path, alternated")
    parser.add_argument("--threads", type=int, help="torch CPU threads of both (default: torch's)")
    parser.add_argument("--no-prefetch", action="store_true")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument(
        "--feed-only",
        action="store_true",
        help="no training: the tokens/s of batches the store path alone delivers",
    )
    parser.add_argument("--measure", choices=("store", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="saeseeds-throughput-"))
    if args.feed_only:
        try:
            rate = feed_rate(work, args)
        finally:
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
        print(f"the store path alone: {rate:,.0f} tokens/s in float32 batches of "
              f"{args.batch_size} (d_in {args.d_in}, {args.steps} batches, "
              f"{torch.get_num_threads()} torch threads)")  # fmt: skip
        return
    # Each fit runs in a process of its own, as the app's jobs do: a thread that has run torch
    # (the store's prefetching) changes how later work in the same process is scheduled.
    common = [
        sys.executable, __file__, "--work-dir", str(work), "--tokens", str(args.tokens),
        "--d-in", str(args.d_in), "--shard-tokens", str(args.shard_tokens),
        "--window-shards", str(args.window_shards), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), *(["--no-prefetch"] if args.no_prefetch else []),
        *(["--threads", str(args.threads)] if args.threads else []),
    ]  # fmt: skip
    results = []
    try:
        ensure_store(work, RandomBuilder(args.d_in, args.shard_tokens), args.tokens)
        for n_features in args.n_features:
            runs: dict[str, list[dict[str, Any]]] = {"memory": [], "store": []}
            for _ in range(args.repeats):
                for path in ("memory", "store"):
                    command = [*common, "--n-features", str(n_features), "--measure", path]
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        raise SystemExit(done.stderr[-3000:])
                    run = json.loads(done.stdout.strip().splitlines()[-1])
                    runs[path].append(run)
                    print(f"n_features={n_features} {path}: fit {run['seconds']:.2f} s "
                          f"(data ready in {run['ready']:.2f} s, {run['threads']} torch threads)",
                          flush=True)  # fmt: skip
            same = len({run["weights"] for path in runs for run in runs[path]}) == 1
            median = {path: statistics.median(r["seconds"] for r in runs[path]) for path in runs}
            results.append((n_features, median["store"], median["memory"], same))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    tokens = args.steps * args.batch_size
    print(f"\n{args.steps} steps of {args.batch_size} tokens, d_in {args.d_in}, {args.tokens:,} "
          f"training tokens, windows of {args.window_shards} x {args.shard_tokens} rows"
          f"{' (no prefetch)' if args.no_prefetch else ''}; "
          f"median of {args.repeats} fit(s)")  # fmt: skip
    print(f"{'n_features':>10} | {'store tok/s':>12} | {'memory tok/s':>12} | {'store/memory':>12} "
          f"| same weights")  # fmt: skip
    print(f"{'-' * 10}-+-{'-' * 12}-+-{'-' * 12}-+-{'-' * 12}-+-{'-' * 12}")
    for n_features, from_store, from_memory, same in results:
        print(f"{n_features:>10} | {tokens / from_store:>12,.0f} | {tokens / from_memory:>12,.0f} "
              f"| {from_memory / from_store:>12.3f} | {'yes' if same else 'NO'}")  # fmt: skip
    if not all(same for *_, same in results):
        raise SystemExit(
            "The two paths trained different weights: they did not read the same batches."
        )


if __name__ == "__main__":
    main()
