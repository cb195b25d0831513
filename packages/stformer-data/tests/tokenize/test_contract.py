"""The tokenizer contract: one method, one return type, used by the streaming reader as is."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stformer_data import (
    BinnedTokenizer,
    BinnedTokenizerConfig,
    Cells,
    FileCells,
    GeneVocab,
    RankValueTokenizer,
    TokenBlock,
    Tokenizer,
    binned_vocab,
    map_genes,
)
from stformer_data.tokenize.contract import token_room

GENES = ["a", "b", "c", "d"]


class ColumnOrder(Tokenizer):
    """A tokenizer of one's own: a cell's expressed genes in column order, plus a per-file call
    counter (what the contract lets a tokenizer keep per file)."""

    def __init__(self, vocab: GeneVocab) -> None:
        self.vocab = self.gene_vocab = vocab
        self.prepared = 0

    def tokenize(self, cells: Cells) -> TokenBlock:
        def build():
            self.prepared += 1
            return cells.file.mapping.column_token.astype(np.int32)

        tokens = cells.file.state(self, "tokens", build)
        m = cells.matrix()
        ids = tokens[m.indices]
        keep = (ids >= 0) & (m.data > 0)
        lengths = np.add.reduceat(keep, m.indptr[:-1]) if m.nnz else np.zeros(m.shape[0], int)
        lengths = np.where(np.diff(m.indptr) > 0, lengths, 0)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return TokenBlock.from_offsets({"input_ids": ids[keep]}, offsets)


def _file(tmp_path):
    X = sp.csr_matrix(np.array([[0, 3, 1, 0], [2, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], "f4"))
    path = tmp_path / "x.h5ad"
    obs = pd.DataFrame({"sex": ["F", "M", "F", "M"]}, index=[f"c{i}" for i in range(4)])
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(path)
    return path, X


def test_token_block_rows_offsets_and_lengths():
    block = TokenBlock.from_offsets(
        {"input_ids": np.array([5, 6, 7], np.int32)}, np.array([0, 2, 2, 3])
    )
    assert block.n_rows == 3
    assert [block.row(i).tolist() for i in range(3)] == [[5, 6], [], [7]]
    assert block.offsets.tolist() == [0, 2, 2, 3]
    assert block.lengths.tolist() == [2, 0, 1]


def test_every_tokenizer_implements_the_one_method():
    vocab = GeneVocab.from_genes(GENES)
    mapping = map_genes(np.array(GENES), vocab, vocab.special_ids)
    counts = sp.csr_matrix(np.array([[0, 3, 1, 0], [2, 0, 0, 0]], "f4"))
    file = FileCells(mapping=mapping, obs={"sex": np.array(["F", "M"])}, obs_names=("sex",))
    rank = RankValueTokenizer(vocab, dict.fromkeys(GENES, 1.0))
    binned = BinnedTokenizer(
        vocab,
        binned_vocab(3, {"sex": ["F", "M"]}),
        BinnedTokenizerConfig(n_bins=3, phenotypes=("sex",)),
    )
    for tok in (rank, binned):
        block = tok.tokenize(Cells(counts=counts, file=file, select=np.array([1, 0])))
        assert isinstance(block, TokenBlock) and set(block.fields) == set(tok.fields)
        assert block.n_rows == 2
    # the rank block equals the documented per-row API, rows in the order selected
    block = rank.tokenize(Cells(counts=counts, file=file, select=np.array([1, 0])))
    want = rank.tokenize_block(counts[[1, 0]], np.ones(2), mapping)
    assert [block.row(i).tolist() for i in range(2)] == [w.tolist() for w in want]
    # in place: the rows land in the slots given, with token_room room
    room = token_room(rank, np.diff(counts.indptr))
    out = np.full(int(room.sum()), -1, np.int32)
    starts = np.concatenate([[0], np.cumsum(room)[:-1]])
    placed = rank.tokenize(Cells(counts=counts, file=file, out=out, out_start=starts))
    assert placed.fields["input_ids"] is out
    assert [placed.row(i).tolist() for i in range(2)] == [w.tolist() for w in want[::-1]]


def test_a_tokenizer_of_ones_own_streams_on_the_fly(tmp_path):
    torch_data = pytest.importorskip("stformer_data.torch")
    path, X = _file(tmp_path)
    vocab = GeneVocab.from_genes(GENES)
    tok = ColumnOrder(vocab)
    ds = torch_data.H5adStreamDataset([path], tokenizer=tok, batch_size=4)
    assert tok.prepared == 1  # the file's state was derived once, before any worker
    (batch,) = list(ds)
    got = {
        int(c): batch["input_ids"][i, : int(n)].tolist()
        for i, (c, n) in enumerate(zip(batch["cell_index"], batch["length"], strict=True))
    }
    want = {i: [vocab[GENES[j]] for j in X[i].indices] for i in range(4)}
    assert got == want
    assert tok.prepared == 1


def test_objects_that_are_not_tokenizers_are_refused_naming_the_contract(tmp_path):
    torch_data = pytest.importorskip("stformer_data.torch")
    path, _ = _file(tmp_path)

    class Duck:  # has the old method names, not the contract
        def column_factors(self, mapping):
            return np.ones(mapping.n_genes)

        def tokenize_block(self, block, n_counts, mapping, factors=None):
            return []

    with pytest.raises(TypeError, match="stformer_data.Tokenizer"):
        torch_data.H5adStreamDataset([path], tokenizer=Duck())
