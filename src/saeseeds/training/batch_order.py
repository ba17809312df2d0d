"""Which training rows make the batch at each step: a function of (order seed, step) only.

Epoch e reads the shards of the training prefix in the order ``randperm(n_shards)`` drawn from
(order seed, e). Consecutive shards of that order form windows of ``window_shards`` shards; the
rows of window w are permuted by a generator seeded with (order seed, e, w), and the epoch's row
order is the windows' orders one after another. Batch b of the epoch is positions
[b·B, (b+1)·B) of it (a batch may straddle two windows), and an epoch has ``n_rows // B`` batches.
So memory holds a window or two, never the training set, and a run resumed at any step, or
another seed trained on the same order seed, sees exactly the same batches.

Training takes its steps in blocks of consecutive batches (:func:`blocks_from`), several
optimisation steps per turn of the training loop. A block ends at every step where something
happens between steps (a log, a checkpoint, a held-out point: :class:`BlockEnds`), so blocks
change when things happen, never which batches are read. This module knows neither files nor
Lightning.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from saeseeds.activations.shards import seeded_generator
from saeseeds.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """Window ``index`` of an epoch: its shards (in reading order) and its rows' positions."""

    index: int
    shards: tuple[int, ...]
    start: int  # position of its first row in the epoch's order
    rows: int


class BatchOrder:
    """The seeded batch order over shards of ``shard_rows`` rows each."""

    def __init__(self, shard_rows: list[int], batch_size: int, window_shards: int, seed: int):
        if window_shards < 1:
            raise ConfigError(f"data.window_shards={window_shards} must be a positive integer.")
        self.shard_rows, self.batch_size = list(shard_rows), batch_size
        self.window_shards, self.seed = window_shards, seed
        self.n_rows = sum(self.shard_rows)
        self.steps_per_epoch = self.n_rows // batch_size  # the ragged tail is dropped
        self.windows = lru_cache(maxsize=2)(self._windows)
        self._starts = lru_cache(maxsize=2)(self._window_starts)

    def _windows(self, epoch: int) -> tuple[Window, ...]:
        shard_order = torch.randperm(
            len(self.shard_rows), generator=seeded_generator(self.seed, "shards", epoch)
        ).tolist()
        windows, start = [], 0
        for index, first in enumerate(range(0, len(shard_order), self.window_shards)):
            shards = tuple(shard_order[first : first + self.window_shards])
            rows = sum(self.shard_rows[shard] for shard in shards)
            windows.append(Window(index, shards, start, rows))
            start += rows
        return tuple(windows)

    def _window_starts(self, epoch: int) -> list[int]:
        return [window.start for window in self.windows(epoch)]

    def row_order(self, epoch: int, window: Window) -> Tensor:
        """The permutation of the window's rows (positions in its concatenated shards)."""
        generator = seeded_generator(self.seed, "rows", epoch, window.index)
        return torch.randperm(window.rows, generator=generator)

    def pieces(self, epoch: int, batch: int, part: slice) -> list[tuple[Window, int, int]]:
        """The windows that batch ``batch`` of ``epoch`` (its rows ``part``: a DDP process's
        share) reads, each with the [start, stop) of its positions inside that window."""
        first = batch * self.batch_size + (part.start or 0)
        stop = batch * self.batch_size + (part.stop if part.stop is not None else self.batch_size)
        windows, found = self.windows(epoch), []
        # A bisection finds the window holding ``first``: a step costs the same at any size.
        index = bisect.bisect_right(self._starts(epoch), first) - 1
        while index < len(windows) and windows[index].start < stop:
            window = windows[index]
            lo, hi = max(first, window.start), min(stop, window.start + window.rows)
            found.append((window, lo - window.start, hi - window.start))
            index += 1
        return found

    def next_window(self, epoch: int, window: Window) -> tuple[int, Window]:
        """The window read after ``window``: the epoch's next one that a batch reads, else the
        next epoch's first."""
        windows = self.windows(epoch)
        if window.index + 1 < len(windows):
            following = windows[window.index + 1]
            if following.start < self.steps_per_epoch * self.batch_size:
                return epoch, following
        return epoch + 1, self.windows(epoch + 1)[0]

    def first_step(self, epoch: int, window: Window) -> int:
        """The global step of the first batch that reads ``window``."""
        return epoch * self.steps_per_epoch + window.start // self.batch_size

    def state(self) -> dict[str, int]:
        """What fixes the order, for checkpoints: resuming with anything else is refused."""
        return {
            "seed": self.seed,
            "n_rows": self.n_rows,
            "batch_size": self.batch_size,
            "shards": len(self.shard_rows),
            "window_shards": self.window_shards,
        }


class BlockEnds:
    """The step counts at which a block of steps ends, because something happens once that many
    steps are done: every multiple of each interval of ``every`` (logging, checkpoints; 0 is
    none), the step of each of ``fractions`` of ``total_steps`` (held-out points, snapshots), and
    ``total_steps`` itself. No block is longer than ``longest`` steps: when no interval of
    ``every`` is that short, blocks also end at multiples of ``longest``.
    """

    def __init__(
        self,
        every: tuple[int, ...] = (),
        fractions: tuple[float, ...] = (),
        total_steps: int | None = None,
        longest: int = 1,
    ):
        if longest < 1:
            raise ConfigError(f"a block of steps must hold at least one step, got {longest}.")
        self.marked = {fraction_step(f, total_steps) for f in fractions} if total_steps else set()
        if total_steps:
            self.marked.add(total_steps)
        self.periods = sorted({period for period in every if period > 0})
        if not self.periods or self.periods[0] > longest:  # else those already bound a block
            self.periods.insert(0, longest)

    def __contains__(self, steps_done: int) -> bool:
        return steps_done in self.marked or any(steps_done % p == 0 for p in self.periods)


def fraction_step(fraction: float, total_steps: int) -> int:
    """The optimisation step at which ``fraction`` of training is done (at least step 1)."""
    return max(1, round(fraction * total_steps))


def blocks_from(order: BatchOrder, start_step: int, ends: BlockEnds) -> Iterator[Block]:
    """The blocks of the epoch that ``start_step`` falls in, from it on: consecutive batches that
    end at the epoch's end, at ``ends`` and after at most ``ends.longest`` steps."""
    epoch, batch = divmod(start_step, order.steps_per_epoch)
    first_step = epoch * order.steps_per_epoch
    while batch < order.steps_per_epoch:
        count = 1
        while batch + count < order.steps_per_epoch and first_step + batch + count not in ends:
            count += 1
        yield Block(epoch, batch, count)
        batch += count


@dataclass(frozen=True)
class Block:
    """Batches ``first`` .. ``first + count - 1`` of ``epoch``: one turn of the training loop."""

    epoch: int
    first: int
    count: int
