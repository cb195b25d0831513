import h5py
import numpy as np
import pytest

from stformer_data.h5ad.direct import MappedSegments as _MappedSegments
from stformer_data.h5ad.direct import direct_view as _direct_view
from stformer_data.stream.h5ad_reader import runs as _runs


def test_runs_bridge_small_gaps_only():
    assert _runs(np.array([0, 1, 2, 5, 40, 41]), max_gap=2) == [(0, 6), (40, 42)]
    assert _runs(np.array([], dtype=np.int64), max_gap=2) == []


@pytest.mark.parametrize("layout", ["contiguous", "interleaved_chunks"])
def test_memory_mapped_slices_equal_hdf5_reads(tmp_path, layout):
    path = tmp_path / "x.h5"
    rng = np.random.default_rng(0)
    a, b = rng.random(10_000).astype(np.float32), rng.integers(0, 99, 10_000).astype(np.int32)
    with h5py.File(
        path, "w", rdcc_nbytes=0
    ) as f:  # no chunk cache: chunks are written as they come
        if layout == "contiguous":
            f.create_dataset("a", data=a)
            f.create_dataset("b", data=b)
        else:  # grown piece by piece, two datasets at once: chunks of each are not back to back
            da = f.create_dataset(
                "a", shape=(0,), maxshape=(None,), chunks=(512,), dtype=np.float32
            )
            db = f.create_dataset("b", shape=(0,), maxshape=(None,), chunks=(512,), dtype=np.int32)
            for s in range(0, 10_000, 1500):
                for d, x in ((da, a), (db, b)):
                    d.resize((min(s + 1500, 10_000),))
                    d[s : s + 1500] = x[s : s + 1500]
    with h5py.File(path, "r") as f:
        for name, truth in (("a", a), ("b", b)):
            view = _direct_view(path, f[name])
            assert isinstance(view, _MappedSegments)
            if layout == "interleaved_chunks":
                assert len(view._segments) > 1
            for lo, hi in [(0, 10_000), (511, 513), (1499, 4603), (9_999, 10_000), (20, 20)]:
                assert np.array_equal(view[lo:hi], truth[lo:hi])


def test_compressed_datasets_stay_with_hdf5(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.arange(1000, dtype=np.float32), compression="gzip")
    with h5py.File(path, "r") as f:
        assert isinstance(_direct_view(path, f["a"]), h5py.Dataset)


@pytest.mark.skipif(
    not __import__("os").path.exists("/proc/self/smaps"), reason="reads Linux /proc/self/smaps"
)
def test_release_unmaps_pages_and_reads_come_back(tmp_path):
    path = tmp_path / "x.h5"
    truth = np.arange(4_000_000, dtype=np.float32)  # 16 MB: many pages
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=truth)
    with h5py.File(path, "r") as f:
        view = _direct_view(path, f["a"])
        assert isinstance(view, _MappedSegments)
        assert view._mmap is not None  # the map itself stays reachable for madvise
        assert float(view[:].sum(dtype=np.float64)) == float(truth.sum(dtype=np.float64))
        resident = _resident_pages(path)
        view.release(0, truth.size)
        assert _resident_pages(path) < resident // 4  # unmapped from this process
        assert np.array_equal(view[1000:2000], truth[1000:2000])  # and back on the next read


def _resident_pages(path) -> int:
    """Pages of the mapping resident in this process (Linux smaps Rss of the file's mapping)."""
    import re
    from pathlib import Path

    text = Path("/proc/self/smaps").read_text()
    total = 0
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        if block.split("\n", 1)[0].endswith(str(path)):
            m = re.search(r"^Rss:\s+(\d+) kB", block, re.M)
            total += int(m.group(1)) if m else 0
    return total
