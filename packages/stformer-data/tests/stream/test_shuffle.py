import numpy as np
import pytest

from stformer_data import (
    BlockShuffleStrategy,
    RandomShuffleStrategy,
    SequentialBlockStrategy,
)


def _cover(starts, stops):
    return np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])


@pytest.mark.parametrize(
    "strategy",
    [
        BlockShuffleStrategy(block_size=3),
        BlockShuffleStrategy(block_size=4),
        SequentialBlockStrategy(block_size=2),
        RandomShuffleStrategy(),
    ],
)
def test_blocks_cover_every_cell_once_and_never_cross_files(strategy):
    counts = np.array([7, 0, 5, 1])
    starts, stops = strategy.block_order(counts, np.random.default_rng(3))
    assert sorted(_cover(starts, stops).tolist()) == list(range(13))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    assert np.array_equal(
        np.searchsorted(offsets, starts, "right"), np.searchsorted(offsets, stops - 1, "right")
    )
    assert np.all(stops - starts <= strategy.block_size)


def test_sequential_keeps_file_order_and_block_shuffle_does_not():
    counts = np.array([40, 40])
    seq = SequentialBlockStrategy(block_size=8).block_order(counts, np.random.default_rng(0))
    assert _cover(*seq).tolist() == list(range(80))
    shuffled = BlockShuffleStrategy(block_size=8).block_order(counts, np.random.default_rng(0))
    assert _cover(*shuffled).tolist() != list(range(80))


@pytest.mark.parametrize("field", ["block_size", "buffer_size"])
def test_invalid_sizes_are_refused_naming_the_field(field):
    with pytest.raises(ValueError, match=field):
        BlockShuffleStrategy(**{field: 0})
