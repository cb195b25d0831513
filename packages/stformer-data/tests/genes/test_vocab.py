from __future__ import annotations

import pytest

from stformer_data import (
    CLS,
    EOS,
    GeneVocab,
    InputError,
    load_geneformer_dictionaries,
    load_name_to_id,
    simulate_counts,
)


@pytest.mark.shared_data
def test_geneformer_pickles_load_only_when_allowed_and_convert_to_json(shared_data, tmp_path):
    gf = shared_data / "geneformer_30M"
    with pytest.raises(InputError, match="runs code"):
        GeneVocab.load(gf / "token_dictionary.pkl")
    vocab, medians, name_to_id = load_geneformer_dictionaries(gf, allow_pickle=True)
    assert len(vocab) == 25426 and vocab.pad_id == 0 and vocab.mask_id == 1
    assert len(medians) == 25424 and len(name_to_id) == 40248
    back = GeneVocab.load(vocab.save_json(tmp_path / "v.json"))
    assert back.content_hash() == vocab.content_hash()
    with_cls = vocab.with_special_tokens(cls_token=True, eos_token=True)
    assert (
        with_cls[CLS] == 25426
        and with_cls[EOS] == 25427
        and with_cls["ENSG00000000003"] == vocab["ENSG00000000003"]
    )
    assert with_cls.special_ids == frozenset({0, 1, 25426, 25427})


@pytest.mark.shared_data
def test_symbols_map_to_ensembl_through_the_name_dictionary(shared_data):
    gf = shared_data / "geneformer_30M"
    name_to_id = load_name_to_id(gf / "gene_name_id_dict.pkl", allow_pickle=True)
    f = shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad"
    by_dict = GeneVocab.from_files([f], name_to_id=name_to_id)
    by_column = GeneVocab.from_files([f], gene_id_key="ensembl_id")
    assert sum(g.startswith("ENSG") for g in by_dict.genes) >= len(by_column.genes) - 5


def test_vocab_from_files_keeps_first_appearance_order(tmp_path):
    a = simulate_counts(n_cells=5, n_genes=30, program_size=5, seed=0)
    a.write_h5ad(tmp_path / "a.h5ad")
    b = a[:, ::-1].copy()
    b.write_h5ad(tmp_path / "b.h5ad")
    v = GeneVocab.from_files([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], cls_token=True)
    assert v.genes == list(a.var_names) and v.cls_id == 2
    assert (
        GeneVocab.from_files([tmp_path / "a.h5ad"], gene_id_key="gene_symbol").genes[0]
        == "SIMGENE0"
    )
