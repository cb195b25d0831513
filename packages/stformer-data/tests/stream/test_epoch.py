import numpy as np
import pytest

from stformer_data import (
    BlockShuffleStrategy,
    RandomShuffleStrategy,
    SequentialBlockStrategy,
    batch_diversity,
    batches_per_rank,
    bucket_batches,
    padding_fraction,
    plan_epoch,
)

COUNTS = np.array([37, 0, 101, 12, 55])  # 205 cells, one empty source


def _all_batches(counts, strategy, *, world, workers, batch_size, even, epoch=0, seed=0):
    """Per rank, the batches (arrays of global cell ids) that all its workers yield together."""
    per_rank = []
    for rank in range(world):
        batches = []
        for worker in range(workers):
            for plan in plan_epoch(
                counts,
                strategy,
                batch_size=batch_size,
                world_size=world,
                rank=rank,
                num_workers=workers,
                worker_id=worker,
                even_batches=even,
                epoch=epoch,
                seed=seed,
            ):
                batches += [plan.cells[p] for p in plan.batches()]
        per_rank.append(batches)
    return per_rank


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "strategy",
    [
        BlockShuffleStrategy(block_size=8, buffer_size=32),
        SequentialBlockStrategy(),
        RandomShuffleStrategy(buffer_size=16),
    ],
)
def test_even_every_cell_exactly_once_and_equal_batch_counts(world, workers, strategy):
    per_rank = _all_batches(
        COUNTS, strategy, world=world, workers=workers, batch_size=16, even="even"
    )
    cells = np.concatenate([b for batches in per_rank for b in batches])
    assert sorted(cells.tolist()) == list(range(COUNTS.sum()))
    n = batches_per_rank(int(COUNTS.sum()), batch_size=16, world_size=world, even_batches="even")
    assert all(len(batches) == n for batches in per_rank)
    assert all(0 < b.size <= 16 for batches in per_rank for b in batches)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_drop_gives_full_batches_and_at_most_once(world):
    per_rank = _all_batches(
        COUNTS,
        BlockShuffleStrategy(block_size=8, buffer_size=32),
        world=world,
        workers=2,
        batch_size=16,
        even="drop",
    )
    cells = np.concatenate([b for batches in per_rank for b in batches])
    assert np.unique(cells).size == cells.size
    assert cells.size == (COUNTS.sum() // (world * 16)) * world * 16
    assert len({len(b) for b in per_rank}) == 1 and all(b.size == 16 for bs in per_rank for b in bs)


@pytest.mark.parametrize("world", [1, 3, 4])
def test_pad_covers_every_cell_with_full_batches(world):
    per_rank = _all_batches(
        COUNTS,
        BlockShuffleStrategy(block_size=8, buffer_size=32),
        world=world,
        workers=1,
        batch_size=16,
        even="pad",
    )
    cells = np.concatenate([b for batches in per_rank for b in batches])
    assert set(cells.tolist()) == set(range(COUNTS.sum()))
    assert cells.size - COUNTS.sum() < world * 16
    assert len({len(b) for b in per_rank}) == 1 and all(b.size == 16 for bs in per_rank for b in bs)


def test_order_is_deterministic_per_epoch_and_changes_between_epochs():
    strategy = BlockShuffleStrategy(block_size=4, buffer_size=32)

    def order(epoch, seed=0):
        return np.concatenate(
            [p.cells for p in plan_epoch(COUNTS, strategy, batch_size=8, epoch=epoch, seed=seed)]
        )

    assert np.array_equal(order(1), order(1))
    assert not np.array_equal(order(0), order(1))
    assert not np.array_equal(order(0, seed=0), order(0, seed=1))


def test_workers_read_disjoint_buffers():
    plans = [
        plan_epoch(
            COUNTS,
            BlockShuffleStrategy(block_size=4, buffer_size=32),
            batch_size=8,
            num_workers=2,
            worker_id=w,
        )
        for w in range(2)
    ]
    assert {p.index % 2 for p in plans[0]} == {0} and {p.index % 2 for p in plans[1]} == {1}
    assert not set(np.concatenate([p.cells for p in plans[0]]).tolist()) & set(
        np.concatenate([p.cells for p in plans[1]]).tolist()
    )


def test_even_refuses_when_ranks_cannot_all_get_a_batch():
    with pytest.raises(ValueError, match="even_batches"):
        plan_epoch([3], SequentialBlockStrategy(), batch_size=2, world_size=4, rank=0)


def test_bucketing_lowers_padding_and_keeps_batch_sizes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 2048, size=512)
    sizes = np.full(16, 32)
    plain = [lengths[i * 32 : (i + 1) * 32] for i in range(16)]
    bucketed = bucket_batches(lengths, sizes, np.random.default_rng(1))
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(512))
    assert [b.size for b in bucketed] == [32] * 16
    assert padding_fraction([lengths[b] for b in bucketed]) < 0.2 < padding_fraction(plain)


def test_batch_diversity_ranges_from_single_source_to_fully_mixed():
    mixed = [np.array([0, 1, 2, 3] * 4) for _ in range(5)]
    single = [np.full(16, k) for k in range(4)]
    assert batch_diversity(mixed) == pytest.approx(1.0)
    assert batch_diversity(single) == 0.0
    assert 0.0 < batch_diversity(mixed[:1] + single) < 1.0


def test_block_shuffle_mixes_sources_far_better_than_sequential():
    counts = np.full(8, 2000)
    offsets = np.concatenate([[0], np.cumsum(counts)])

    def diversity(strategy):
        batches = _all_batches(counts, strategy, world=1, workers=1, batch_size=64, even="even")[0]
        return batch_diversity([np.searchsorted(offsets, b, "right") for b in batches])

    assert diversity(SequentialBlockStrategy()) < 0.05
    assert diversity(BlockShuffleStrategy(block_size=64, buffer_size=4096)) > 0.8
