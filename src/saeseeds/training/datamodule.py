"""Batches of activations for Lightning, in an order fixed by the order seed and the global step.

The order seed is ``order_seed``, or ``seed`` when that is null (:func:`order_seed`); which rows
make each batch is :mod:`saeseeds.training.batch_order`'s. Because the batch served at global step
s depends only on (order seed, s), a run resumed from a mid-epoch checkpoint continues with exactly
the batches the uninterrupted run would have seen, and runs that share an order seed see the same
batch stream whatever their SAE seed. :class:`WindowedRows` holds at most two windows of training
rows in their storage dtype (the one being read and the next, loaded in a background thread) and
converts each batch to float32. It does not compute activations.

Lightning is handed one :class:`BlockBatches` per turn of its loop: the consecutive batches of a
block (:func:`saeseeds.training.batch_order.blocks_from`), each read only when the training step
reaches it, so memory holds one batch as before. Lightning's own per-batch work is then paid once
per block instead of once per optimisation step; on 2 CPU cores it made a 128-latent step about
15% slower.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from saeseeds.activations.shards import TrainingRows
from saeseeds.errors import ConfigError
from saeseeds.training.batch_order import BatchOrder, Block, BlockEnds, Window, blocks_from

# The most optimisation steps in one turn of Lightning's loop (a block also ends wherever a log,
# checkpoint, held-out point or snapshot is due). A stop signal is seen at the end of a block.
LONGEST_BLOCK = 16


def order_seed(cfg: Any) -> int:
    """The seed of the batch order: ``order_seed``, or the run's ``seed`` when it is null."""
    chosen = cfg.get("order_seed")
    return int(cfg.seed if chosen is None else chosen)


def window_shards(cfg: Any) -> int:
    return int(cfg.data.get("window_shards", 4))


class WindowedRows(Dataset):
    """The training batch at (epoch, batch index), read from a window of shards in memory.

    A window's shards are read straight into one tensor (in their storage dtype), kept with its
    row permutation until the batches have moved past it; the next one is loaded in a background
    thread meanwhile (``prefetch``), into the tensor of the window last let go when it has room,
    so a long run does not allocate (and page in) a fresh window each time. No window is loaded
    ahead whose first batch comes after ``end_step`` (the run's last step, when known).

    Each load runs in a thread of its own that ends with it. A thread that has run a parallel
    torch op (the window's permutation; a synthetic source's rows) keeps an OpenMP team of its
    own while it lives, and then the training thread's OpenMP workers stop spin-waiting between
    parallel regions (libgomp manages more threads than there are cores): beside one long-lived
    loader thread a 128-latent SAE's step took 1.6x as long on 2 cores.

    A window whose shards are all held already (a training prefix of no more shards than a
    window holds is the same window every epoch, in another shard order) is not read again: its
    rows stay where they are and its permutation is mapped onto their positions, so every batch
    is the same rows in the same order as from a fresh read. On 2 CPU cores each read of the
    mission's 131,072 rows took 0.3-0.5 s of CPU beside training, once an epoch.

    ``peak_rows`` records the most training rows ever held (or being loaded) at once, for tests
    of bounded memory; a window that reuses held rows adds none.
    """

    def __init__(self, train: TrainingRows, order: BatchOrder, prefetch: bool = True):
        self.train, self.order, self.prefetch = train, order, prefetch
        self.part = slice(None)  # this process's share of every batch (DDP)
        self.end_step: int | None = None
        self._loaded: dict[tuple[int, int], _Held] = {}  # by (epoch, window index)
        self._spare: Tensor | None = None  # the storage of the window let go last
        self._lock = threading.Lock()
        self.peak_rows = 0

    def __len__(self) -> int:
        return self.order.steps_per_epoch

    def __getitem__(self, position: tuple[int, int]) -> Tensor:  # [batch, d_in] float32
        epoch, batch = position
        pieces = self.order.pieces(epoch, batch, self.part)
        rows = []
        for window, start, stop in pieces:
            held, permutation = self.window(epoch, window)
            # index_select copies whole rows: half the time of advanced indexing here.
            rows.append(torch.index_select(held, 0, permutation[start:stop]))
        # Batches come in order, so no later batch reads a window before this one's last.
        self._forget_before(epoch, pieces[-1][0].index)
        if self.prefetch:
            following = self.order.next_window(epoch, pieces[-1][0])
            if self.end_step is None or self.order.first_step(*following) <= self.end_step:
                self._start(*following)
        return torch.cat(rows).float() if len(rows) > 1 else rows[0].float()

    def window(self, epoch: int, window: Window) -> tuple[Tensor, Tensor]:
        """The window's rows [rows, d_in] (storage dtype) and their permutation; the rows are
        valid until the batches move past the window (its storage is then reused)."""
        storage, permutation, _ = self._start(epoch, window).result()
        return storage[: len(permutation)], permutation

    def _start(self, epoch: int, window: Window) -> Future:
        with self._lock:
            key = (epoch, window.index)
            if key not in self._loaded:
                loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saeseeds-window")
                held = self._holding(window.shards)
                if held is None:
                    future = loader.submit(self._load, epoch, window)
                    self._loaded[key] = _Held(future, window.shards, window.rows)
                else:
                    future = loader.submit(self._reorder, epoch, window, *held)
                    self._loaded[key] = _Held(future, window.shards, 0, held[0])
                loader.shutdown(wait=False)  # its thread ends with this load (see the class)
                in_memory = sum(held.rows for held in self._loaded.values())
                self.peak_rows = max(self.peak_rows, in_memory)
            return self._loaded[key].future

    def _holding(self, shards: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]] | None:
        """(storage, the shards it holds in order) of a loaded window of the same ``shards``."""
        for held in self._loaded.values():
            if sorted(held.shards) == sorted(shards) and _loaded_fine(held.future):
                storage, _, layout = held.future.result()
                return storage, layout
        return None

    def _reorder(
        self, epoch: int, window: Window, storage: Tensor, layout: tuple[int, ...]
    ) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """The window's permutation over ``storage``, which holds its shards in ``layout``'s
        order: position p of the window (its shards in its own order) is row ``where[p]``."""
        permutation = self.order.row_order(epoch, window)
        if tuple(window.shards) != tuple(layout):
            used, first, starts = self.train.used_rows, 0, {}
            for index in layout:
                starts[index], first = first, first + used[index]
            where = [torch.arange(starts[i], starts[i] + used[i]) for i in window.shards]
            permutation = torch.cat(where)[permutation]
        return storage, permutation, layout

    def _load(self, epoch: int, window: Window) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """(storage whose first rows are the window's, the window's row permutation, the
        shards the storage holds, in order)."""
        with self._lock:
            storage, self._spare = self._spare, None
        if storage is None or len(storage) < window.rows:
            storage = torch.empty(window.rows, self.train.d_in, dtype=self.train.dtype)
        first = 0
        for index in window.shards:
            count = self.train.used_rows[index]
            self.train.read_into(index, storage[first : first + count])
            first += count
        return storage, self.order.row_order(epoch, window), tuple(window.shards)

    def _forget_before(self, epoch: int, index: int) -> None:
        with self._lock:
            for key in [key for key in self._loaded if key < (epoch, index)]:
                gone = self._loaded.pop(key)
                if not _loaded_fine(gone.future):
                    continue
                storage = gone.future.result()[0]
                if any(held.uses(storage) for held in self._loaded.values()):
                    continue  # a later window reads these rows in place
                if self._spare is None or len(storage) > len(self._spare):
                    self._spare = storage

    def close(self) -> None:
        """Cancel the loads not started and wait for the rest, so no loader outlives the fit."""
        with self._lock:
            futures = [held.future for held in self._loaded.values()]
            self._loaded.clear()
            self._spare = None
        for future in futures:
            future.cancel()
        wait(futures)


@dataclass
class _Held:
    """A window being loaded or held: its load, its shards, the rows it adds to memory, and the
    storage of another window whose rows it reads in place (``reused``), if any."""

    future: Future
    shards: tuple[int, ...]
    rows: int
    reused: Tensor | None = None

    def uses(self, storage: Tensor) -> bool:
        if self.reused is storage:
            return True
        return _loaded_fine(self.future) and self.future.result()[0] is storage


def _loaded_fine(future: Future) -> bool:
    return future.done() and future.exception() is None


class BlockBatches:
    """The float32 batches [batch, d_in] of one block, in order, each read when it is reached."""

    def __init__(self, rows: WindowedRows, block: Block):
        self.rows, self.block = rows, block

    def __len__(self) -> int:
        return self.block.count

    def __iter__(self) -> Iterator[Tensor]:
        epoch, first = self.block.epoch, self.block.first
        for batch in range(first, first + self.block.count):
            yield self.rows[(epoch, batch)]


class BlockDataset(Dataset):
    """The batches of a block of ``rows`` (:class:`BlockBatches`), by :class:`Block`."""

    def __init__(self, rows: WindowedRows):
        self.rows = rows

    def __getitem__(self, block: Block) -> BlockBatches:
        return BlockBatches(self.rows, block)


class SeededBatchSampler(Sampler[Block]):
    """The blocks of every step from ``start_step()`` on, to the end of that epoch.

    It has no length: an epoch ends when its blocks do, so a run resumed with blocks cut
    elsewhere (another ``trainer.log_every_n_steps``) still ends each epoch where its data does.
    """

    def __init__(
        self, order: BatchOrder, ends: BlockEnds, start_step: Callable[[], int] = lambda: 0
    ):
        self.order, self.ends, self.start_step = order, ends, start_step

    def __iter__(self) -> Iterator[Block]:
        yield from blocks_from(self.order, self.start_step(), self.ends)


def check_same_order(saved: dict[str, int], current: dict[str, int]) -> None:
    # A backstop: the run's recorded config is checked before training (checkpoint_io).
    if saved != current:
        raise ConfigError(
            f"The checkpoint was trained with data order {saved}, but this run has {current}. "
            "Resume with the same seed, order_seed, data and data.batch_size as the interrupted "
            "run."
        )


class ResumableLoader(DataLoader):
    """A DataLoader whose checkpointed state is what fixes its order (:meth:`BatchOrder.state`).

    The position inside an epoch needs no saving (it is the global step). Being stateful tells
    Lightning that resuming mid-epoch is exact.
    """

    def state_dict(self) -> dict[str, int]:
        return self.sampler.order.state()

    def load_state_dict(self, state: dict[str, int]) -> None:
        check_same_order(state, self.state_dict())


def process_share(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of every global batch that process ``rank`` of ``world_size`` trains on (DDP)."""
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={batch_size} must be a multiple of the {world_size} training "
            "processes (trainer.devices x trainer.num_nodes): each takes an equal share of "
            "every batch."
        )
    share = batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


def planned_steps(trainer: L.Trainer, steps_per_epoch: int) -> int:
    """The optimisation steps of the fit: ``max_steps``, or ``max_epochs`` epochs if fewer."""
    ends = []
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        ends.append(trainer.max_steps)
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        ends.append(trainer.max_epochs * steps_per_epoch)
    if not ends:
        raise ConfigError(
            "training would never stop: set trainer.max_epochs >= 1 or trainer.max_steps >= 1."
        )
    return max(1, min(ends))


class ActivationDataModule(L.LightningDataModule):
    """The training batches, a block per turn of Lightning's loop; held-out rows are evaluated by
    :class:`saeseeds.training.callbacks.HeldoutCurve`, so there is no validation loader.

    Blocks end at every multiple of ``trainer.log_every_n_steps`` and of ``every`` (the
    checkpoint interval), at the steps of ``fractions`` of training (held-out points,
    snapshots) and at the last step, so each of those happens exactly at its step.
    """

    def __init__(
        self,
        rows: WindowedRows,
        batch_size: int,
        every: tuple[int, ...] = (),
        fractions: tuple[float, ...] = (),
    ):
        super().__init__()
        self.rows, self.batch_size = rows, batch_size
        self.every, self.fractions = tuple(every), tuple(fractions)

    def planned_steps(self) -> int:
        return planned_steps(self.trainer, self.rows.order.steps_per_epoch)

    def block_ends(self) -> BlockEnds:
        trainer = self.trainer
        # Under DDP every backward needs a forward of DDP's wrapper: one step per block.
        longest = LONGEST_BLOCK if trainer.world_size == 1 else 1
        return BlockEnds(
            every=(int(trainer.log_every_n_steps or 0), *self.every),
            fractions=self.fractions,
            total_steps=self.planned_steps(),
            longest=longest,
        )

    def state_dict(self) -> dict[str, int]:
        return self.rows.order.state()

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Restored from every checkpoint, so resuming with another seed or other data is refused.
        check_same_order(state, self.state_dict())

    def _global_step(self) -> int:
        # Read when an epoch's iterator starts, i.e. after a checkpoint has been restored.
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        # The Trainer is built with use_distributed_sampler=False: each process takes its own
        # contiguous, disjoint share of every global batch here, so N devices train on the
        # batches of one device.
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        self.rows.part = process_share(self.batch_size, rank, world_size)
        self.rows.end_step = self.planned_steps() - 1  # the last step's batch is read last
        sampler = SeededBatchSampler(self.rows.order, self.block_ends(), self._global_step)
        return ResumableLoader(BlockDataset(self.rows), sampler=sampler, batch_size=None)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self.rows.close()


def training_rows(
    train: TrainingRows, batch_size: int, window: int, seed: int, prefetch: bool = True
) -> WindowedRows:
    """The windowed reader of ``train`` in the seeded order of ``seed``."""
    return WindowedRows(train, BatchOrder(train.used_rows, batch_size, window, seed), prefetch)


def init_sample(rows: WindowedRows, size: int, generator: torch.Generator) -> Tensor:
    """``size`` rows (float32) drawn with ``generator`` from the first window of epoch 0: the rows
    training reads first, a bounded sample of the whole prefix (its shards in random order)."""
    held, _ = rows.window(0, rows.order.windows(0)[0])
    picked = torch.randperm(len(held), generator=generator)[:size]
    return held[picked].float()
