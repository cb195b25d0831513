"""The chunks of a unit (moved from test_corpus.py: the mapped-segment chunking of the CSR path)."""

from __future__ import annotations

import stformer_data.corpus.chunks as corpus_mod
from stformer_data import TokenizeConfig, tokenize_files

from .test_write import _expected


def test_chunks_follow_the_mapped_segments_of_the_file(tmp_path, small_h5ad, monkeypatch):
    """Stored values split over several file segments (as anndata's chunked writes leave them):
    chunks end at segment breaks, rows straddling one are read alone, the tokens are exact."""
    path, _, vocab, medians = small_h5ad
    real = corpus_mod._direct_view
    breaks = []

    def split(file, dataset):
        view = real(file, dataset)
        if not isinstance(view, corpus_mod._MappedSegments):
            return view
        first, stop, byte = view._segments[0]
        assert len(view._segments) == 1 and stop == view.size  # a contiguous dataset here
        cuts = [first, 997, 1000, 2500, 2501, stop]  # several breaks, two very close
        size = view.dtype.itemsize
        segments = [(a, b, byte + a * size) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        out = corpus_mod._MappedSegments(file, view.dtype, view.size, segments)
        breaks.append(out.breaks.tolist())
        return out

    monkeypatch.setattr(corpus_mod, "_direct_view", split)
    corpus = tokenize_files(
        [path],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        progress=False,
        config=TokenizeConfig(chunk_size=64),
    )
    assert breaks == [[997, 1000, 2500, 2501]] * 2  # data and indices
    assert corpus.dataset["input_ids"] == _expected(path, vocab, medians)
