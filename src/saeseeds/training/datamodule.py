"""Batches of activations for Lightning, in an order fixed by the seed and the global step.

The order of epoch e is ``randperm(N, seed=hash(seed, e))``. Because the batch served at global
step s depends only on (seed, s), a run resumed from a mid-epoch checkpoint continues with exactly
the batches the uninterrupted run would have seen. It does not compute activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from saeseeds.errors import ConfigError


class RowBatches(Dataset):
    """Indexing with a tensor of row indices returns that whole batch (no per-row collation)."""

    def __init__(self, rows: Tensor):  # [n_rows, d_in]
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, indices: Tensor) -> Tensor:  # [batch, d_in]
        return self.rows[indices]


class SeededBatchSampler(Sampler[Tensor]):
    def __init__(
        self, n_rows: int, batch_size: int, seed: int, start_step: Callable[[], int] = lambda: 0
    ):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.start_step = start_step

    def __len__(self) -> int:
        return self.n_rows // self.batch_size  # drop the ragged tail: equal-size steps

    def epoch_order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=generator)

    def __iter__(self) -> Iterator[Tensor]:
        epoch, offset = divmod(self.start_step(), len(self))
        order = self.epoch_order(epoch)
        for batch_index in range(offset, len(self)):
            yield order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]


def check_same_order(saved: dict[str, int], current: dict[str, int]) -> None:
    # A backstop: the run's recorded config is checked before training (checkpoint_io).
    if saved != current:
        raise ConfigError(
            f"The checkpoint was trained with data order {saved}, but this run has {current}. "
            "Resume with the same seed, data and data.batch_size as the interrupted run."
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
        sampler = SeededBatchSampler(
            len(self.train_rows), self.batch_size, self.seed, self._global_step
        )
        return ResumableLoader(RowBatches(self.train_rows), sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        n_rows = len(self.heldout_rows)
        batches = [
            torch.arange(start, min(start + self.batch_size, n_rows))
            for start in range(0, n_rows, self.batch_size)
        ]
        return DataLoader(RowBatches(self.heldout_rows), sampler=batches, batch_size=None)
