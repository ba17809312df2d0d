"""Batches of activations for Lightning, in an order fixed by the order seed and the global step.

The order seed is ``order_seed``, or ``seed`` when that is null (:func:`order_seed`). The order of
epoch e is ``randperm(N, seed=hash(order seed, e))``. Because the batch served at global step s
depends only on (order seed, s), a run resumed from a mid-epoch checkpoint continues with exactly
the batches the uninterrupted run would have seen, and runs that share an order seed see the same
batch stream whatever their SAE seed. It does not compute activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from saeseeds.errors import ConfigError


def order_seed(cfg: Any) -> int:
    """The seed of the batch order: ``order_seed``, or the run's ``seed`` when it is null."""
    chosen = cfg.get("order_seed")
    return int(cfg.seed if chosen is None else chosen)


class RowBatches(Dataset):
    """Indexing with a tensor of row indices returns that whole batch (no per-row collation)."""

    def __init__(self, rows: Tensor):  # [n_rows, d_in]
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, indices: Tensor) -> Tensor:  # [batch, d_in]
        return self.rows[indices]


class SeededBatchSampler(Sampler[Tensor]):
    """The seeded batches of ``batch_size`` rows from ``start_step()`` on. With several processes
    (DDP), each batch is the global one and process ``rank`` of ``world_size`` takes its own
    contiguous, disjoint shard of it, so N devices train on the batches of one device."""

    def __init__(
        self,
        n_rows: int,
        batch_size: int,
        seed: int,
        start_step: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={batch_size} must be a multiple of the {world_size} training "
                "processes (trainer.devices x trainer.num_nodes): each takes an equal share of "
                "every batch."
            )
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.start_step = start_step
        self.shard = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def __len__(self) -> int:
        return self.n_rows // self.batch_size  # drop the ragged tail: equal-size steps

    def epoch_order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=generator)

    def __iter__(self) -> Iterator[Tensor]:
        epoch, offset = divmod(self.start_step(), len(self))
        order = self.epoch_order(epoch)
        for batch_index in range(offset, len(self)):
            batch = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            yield batch[self.shard]


def check_same_order(saved: dict[str, int], current: dict[str, int]) -> None:
    # A backstop: the run's recorded config is checked before training (checkpoint_io).
    if saved != current:
        raise ConfigError(
            f"The checkpoint was trained with data order {saved}, but this run has {current}. "
            "Resume with the same seed, order_seed, data and data.batch_size as the interrupted "
            "run."
        )


class ResumableLoader(DataLoader):
    """A DataLoader whose checkpointed state is what fixes its order: seed, rows, batch size.

    The position inside an epoch needs no saving (it is the global step). Being stateful tells
    Lightning that resuming mid-epoch is exact.
    """

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        return {"seed": sampler.seed, "n_rows": sampler.n_rows, "batch_size": sampler.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        check_same_order(state, self.state_dict())


class ActivationDataModule(L.LightningDataModule):
    def __init__(self, train: Tensor, heldout: Tensor, batch_size: int, seed: int):
        super().__init__()
        self.train_rows, self.heldout_rows = train, heldout
        self.batch_size, self.seed = batch_size, seed

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "n_rows": len(self.train_rows), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Restored from every checkpoint, so resuming with another seed or other data is refused.
        check_same_order(state, self.state_dict())

    def _global_step(self) -> int:
        # Read when an epoch's iterator starts, i.e. after a checkpoint has been restored.
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        # The Trainer is built with use_distributed_sampler=False: sharding is done here.
        rank, world_size = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        sampler = SeededBatchSampler(
            len(self.train_rows), self.batch_size, self.seed, self._global_step, rank, world_size
        )
        return ResumableLoader(RowBatches(self.train_rows), sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        n_rows = len(self.heldout_rows)
        batches = [
            torch.arange(start, min(start + self.batch_size, n_rows))
            for start in range(0, n_rows, self.batch_size)
        ]
        return DataLoader(RowBatches(self.heldout_rows), sampler=batches, batch_size=None)
