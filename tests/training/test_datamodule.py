"""The batch order over shards: every row once per epoch, a batch that depends only on (order
seed, step), DDP shares that make up the batch, and memory bounded by two windows of shards
however many tokens there are; through real training, a run interrupted across windows resumes to
the same weights."""

from __future__ import annotations

import threading
import warnings

import lightning as L
import pytest
import torch

from saeseeds.activations.shards import GeneratedShards, TrainingRows
from saeseeds.training.batch_order import BatchOrder, BlockEnds, blocks_from
from saeseeds.training.datamodule import (
    BlockDataset,
    SeededBatchSampler,
    WindowedRows,
    training_rows,
)
from saeseeds.training.run import train
from tests.training.test_run import InterruptAtStep

ROWS_PER_SHARD = 64


class RecordingShards(GeneratedShards):
    """Shards whose row r holds its global index in every column; records each read's size."""

    def __init__(self) -> None:
        super().__init__(self._make, 3, ROWS_PER_SHARD, torch.float16, "indexed rows")
        self.largest_read, self.reads = 0, []

    def _make(self, index: int, rows: int) -> torch.Tensor:
        self.largest_read = max(self.largest_read, rows)
        self.reads.append(index)
        first = index * ROWS_PER_SHARD
        return torch.arange(first, first + rows, dtype=torch.float32)[:, None].expand(rows, 3)


def epoch_rows(order: BatchOrder, rows: WindowedRows, epoch: int) -> list[int]:
    return [
        int(value)
        for batch in range(order.steps_per_epoch)
        for value in rows[(epoch, batch)][:, 0].tolist()
    ]


def reader(n_rows: int, batch: int, window: int, seed: int, **kwargs) -> WindowedRows:
    return training_rows(TrainingRows(RecordingShards(), n_rows), batch, window, seed, **kwargs)


def test_every_row_is_read_once_per_epoch_in_an_order_fixed_by_the_seed():
    rows = reader(n_rows=1000, batch=48, window=3, seed=5)  # batches straddle windows
    order = rows.order
    assert order.steps_per_epoch == 1000 // 48 and rows.train.n_shards == 16
    first = epoch_rows(order, rows, 0)
    assert len(first) == len(set(first)) == 20 * 48 and set(first) <= set(range(1000))
    second = epoch_rows(order, rows, 1)
    assert second != first  # a new order every epoch
    assert epoch_rows(order, reader(1000, 48, 3, seed=5), 0) == first
    assert epoch_rows(order, reader(1000, 48, 3, seed=5, prefetch=False), 0) == first
    assert epoch_rows(order, reader(1000, 48, 3, seed=6), 0) != first
    # Rows are shuffled across the shards of a window, not only within one shard.
    shards_in_first_batch = {value // ROWS_PER_SHARD for value in first[:48]}
    assert len(shards_in_first_batch) > 1


def test_the_batch_at_a_step_depends_only_on_the_seed_and_the_step():
    rows = reader(n_rows=700, batch=50, window=2, seed=1)
    order = rows.order
    everything = [(e, b) for e in range(3) for b in range(order.steps_per_epoch)]
    expected = {position: rows[position].clone() for position in everything}
    for start in (0, 5, order.steps_per_epoch + 3):  # mid-epoch, and in the second epoch
        resumed = reader(n_rows=700, batch=50, window=2, seed=1)
        ends = BlockEnds(every=(4,), longest=4)
        sampler = SeededBatchSampler(resumed.order, ends, lambda start=start: start)
        dataset = BlockDataset(resumed)
        served = [batch for block in sampler for batch in dataset[block]]
        assert len(served) == order.steps_per_epoch - start % order.steps_per_epoch  # to its end
        for position, batch in zip(everything[start:], served, strict=False):
            assert torch.equal(batch, expected[position])


def test_blocks_cover_each_epoch_and_end_where_something_happens():
    order = BatchOrder([64] * 4, batch_size=10, window_shards=2, seed=0)  # 25 steps an epoch
    ends = BlockEnds(every=(10, 0), fractions=(0.25, 0.5), total_steps=60, longest=16)
    assert 15 in ends and 30 in ends and 60 in ends and 20 in ends and 16 not in ends
    for start in (0, 3, 25, 47):
        blocks = list(blocks_from(order, start, ends))
        epoch = start // 25
        steps = [epoch * 25 + block.first + i for block in blocks for i in range(block.count)]
        assert steps == list(range(start, (epoch + 1) * 25))  # every step once, in order
        for block in blocks:
            done = epoch * 25 + block.first + block.count  # steps done after the block
            assert done in ends or block.first + block.count == 25  # an event, or the epoch end
            inside = range(epoch * 25 + block.first + 1, done)
            assert not any(step in ends for step in inside)  # nothing is due inside a block
    # Without short intervals, a block is at most `longest` steps, aligned to its multiples.
    long_blocks = list(blocks_from(order, 0, BlockEnds(every=(100,), longest=8)))
    assert [block.count for block in long_blocks] == [8, 8, 8, 1]
    # Under DDP (one step per block) every block is a single batch.
    assert all(b.count == 1 for b in blocks_from(order, 0, BlockEnds(every=(10,), longest=1)))


def test_ddp_shares_make_up_each_batch():
    whole = reader(n_rows=640, batch=60, window=2, seed=3)
    shares = []
    for rank in range(3):
        share = reader(n_rows=640, batch=60, window=2, seed=3)
        share.part = slice(rank * 20, (rank + 1) * 20)
        shares.append(share)
    for batch in range(whole.order.steps_per_epoch):
        parts = torch.cat([share[(0, batch)] for share in shares])
        assert torch.equal(parts, whole[(0, batch)])


def test_memory_holds_at_most_two_windows_whatever_the_token_count():
    shards = RecordingShards()
    rows = training_rows(TrainingRows(shards, 64 * ROWS_PER_SHARD), 100, 2, seed=0)
    for epoch in range(2):
        epoch_rows(rows.order, rows, epoch)
    window_rows = 2 * ROWS_PER_SHARD
    assert shards.largest_read == ROWS_PER_SHARD  # shards are read one at a time
    assert rows.peak_rows <= 2 * window_rows  # the window being read and the next one
    assert rows.peak_rows < 64 * ROWS_PER_SHARD / 10
    rows.close()


def test_no_loader_thread_outlives_its_window():
    # A thread that ran a parallel torch op (the permutation, generated rows) slows every
    # parallel op of the training thread while it lives (WindowedRows' docstring).
    rows = reader(n_rows=1000, batch=48, window=2, seed=0)
    epoch_rows(rows.order, rows, 0)
    loaders = [t for t in threading.enumerate() if t.name.startswith("saeseeds-window")]
    for thread in loaders:
        thread.join(timeout=30)
    assert not [thread for thread in loaders if thread.is_alive()]
    assert rows.peak_rows > 0  # windows were loaded ahead, each by a thread now ended
    rows.close()


def test_a_run_reads_every_shard_it_trains_on_once_an_epoch_and_no_window_past_its_end():
    rows = reader(n_rows=1000, batch=48, window=3, seed=5)
    rows.end_step = rows.order.steps_per_epoch - 1  # the last step of a one-epoch run
    served = epoch_rows(rows.order, rows, 0)
    rows.close()
    windows = [window for window in rows.order.windows(0) if window.start < 20 * 48]
    read_by_batches = [shard for window in windows for shard in window.shards]
    assert sorted(rows.train.shards.reads) == sorted(read_by_batches)  # each once, no prefetch
    assert served == epoch_rows(rows.order, reader(1000, 48, 3, seed=5, prefetch=False), 0)


def test_a_prefix_that_fits_one_window_is_read_once_and_reshuffled_in_place_every_epoch():
    # Three shards, windows of four: every epoch is one window of the same shards, each epoch in
    # its own shard order. Row r holds r, so the expected epoch is computed from the order alone:
    # position p of the epoch's window is row starts[shard] + offset, in that epoch's order.
    rows = reader(n_rows=3 * ROWS_PER_SHARD, batch=40, window=4, seed=2)
    order, epochs = rows.order, 6
    served = [epoch_rows(order, rows, epoch) for epoch in range(epochs)]
    rows.close()
    assert sorted(rows.train.shards.reads) == [0, 1, 2]  # each shard read once, in epoch 0
    assert rows.peak_rows == 3 * ROWS_PER_SHARD  # the reused window adds no rows
    shard_orders = {order.windows(epoch)[0].shards for epoch in range(epochs)}
    assert len(shard_orders) > 1  # the reuse had to map positions across shard orders
    for epoch in range(epochs):
        window = order.windows(epoch)[0]
        rows_in_order = [shard * ROWS_PER_SHARD + i for shard in window.shards for i in range(64)]
        expected = [rows_in_order[p] for p in order.row_order(epoch, window).tolist()]
        assert served[epoch] == expected[: order.steps_per_epoch * 40]
    assert served[1] != served[0]
    # Without prefetching, the same batches, and again only one read of each shard.
    alone = reader(n_rows=3 * ROWS_PER_SHARD, batch=40, window=4, seed=2, prefetch=False)
    assert [epoch_rows(order, alone, epoch) for epoch in range(epochs)] == served
    assert sorted(alone.train.shards.reads) == [0, 1, 2]


def expected_batch(order: BatchOrder, epoch: int, batch: int) -> list[int]:
    """Batch ``batch`` of ``epoch`` from the order alone: each window's rows laid out shard by
    shard, taken in that window's row order."""
    found = []
    for window, start, stop in order.pieces(epoch, batch, slice(None)):
        layout = [
            shard * ROWS_PER_SHARD + i
            for shard in window.shards
            for i in range(order.shard_rows[shard])
        ]
        found += [layout[p] for p in order.row_order(epoch, window).tolist()[start:stop]]
    return found


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_reused_window_keeps_its_rows_while_other_windows_load(prefetch):
    # Several windows an epoch, so a window reused into the next epoch outlives the one it was
    # loaded as while other windows load; its storage must never become the spare they load into.
    checked = reused = 0
    for n_rows, window, batch in ((3 * 64 - 10, 1, 16), (4 * 64, 2, 50), (5 * 64 + 7, 8, 40)):
        for seed in range(4):
            rows = reader(n_rows, batch, window, seed, prefetch=prefetch)
            order = rows.order
            for step in range(order.steps_per_epoch * 8):
                epoch, index = divmod(step, order.steps_per_epoch)
                assert rows[(epoch, index)][:, 0].long().tolist() == expected_batch(
                    order, epoch, index
                )
                with rows._lock:
                    held = [h.future.result()[0] for h in rows._loaded.values() if h.future.done()]
                    assert all(storage is not rows._spare for storage in held)
                checked += 1
            reused += len(rows.train.shards.reads) < 8 * rows.train.n_shards
            rows.close()
    assert checked > 500 and reused >= 1  # windows were reused, not read again


@pytest.fixture
def windowed(train_config):
    """Synthetic data of 32 shards of 128 rows in windows of 2 shards (batches straddle them)."""

    def make(*overrides, output_dir):
        return train_config(
            "data.n_tokens=4096",
            "data.batch_size=192",
            "data.shard_tokens=128",
            "data.window_shards=2",
            "logger=none",
            "trainer.checkpoint_every_n_steps=5",
            *overrides,
            output_dir=output_dir,
        )

    return make


class PeakRows(L.Callback):
    def on_train_end(self, trainer, module) -> None:
        self.peak = trainer.datamodule.rows.peak_rows


def test_training_reads_a_bounded_window_and_resumes_across_windows(windowed, tmp_path):
    peak = PeakRows()
    metrics = train(windowed("seed=3", output_dir=tmp_path / "straight"), [peak])
    assert metrics["steps"] == 2 * (4096 // 192)
    assert peak.peak <= 2 * 2 * 128  # two windows of two shards, of 4096 training rows

    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit):  # checkpoint at step 20 (epoch 0), stopped at step 23
        train(windowed("seed=3", output_dir=interrupted), [InterruptAtStep(23)])
    train(windowed("seed=3", "resume=true", output_dir=interrupted))
    weights = "sae_weights.safetensors"
    assert (interrupted / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()


def test_a_job_does_not_pass_on_lightnings_advice_to_add_loader_workers(
    windowed, tmp_path, monkeypatch
):
    """On a machine of many cores Lightning warns that the loader has no workers. The batches
    come from a window in the job's own process (the next one loading in a thread), and a job
    has no option for workers, so the warning is not shown. Lightning would suggest 15 workers
    on a 16-core machine; this one says so whatever its cores."""
    from lightning.pytorch.trainer.connectors import data_connector

    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(windowed("trainer.max_epochs=1", output_dir=tmp_path / "run"))
    assert (tmp_path / "run" / "COMPLETE").is_file()
    assert not [w for w in caught if "num_workers" in str(w.message)]
