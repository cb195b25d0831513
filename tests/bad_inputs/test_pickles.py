"""Pickles stformer reads without ``--allow-pickle`` run nothing: Geneformer model folders and the
documented stFormer loaders use an unpickler that resolves no code (plain dictionaries and numbers only)."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

import stformer_data as sd
from stformer_data.genes.plain_pickle import load_plain_pickle


class _Planted:
    """Unpickled, it would create the marker file (a stand-in for any code a file can carry)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _plant(path, marker, payload_key="ENSG00000000003"):
    path.write_bytes(pickle.dumps({"<pad>": 0, "<mask>": 1, payload_key: _Planted(marker)}))


def test_geneformer_dictionaries_load_as_plain_data(shared_data):
    gf = shared_data / "geneformer_30M"
    with open(gf / "token_dictionary.pkl", "rb") as fh:
        full = pickle.load(fh)
    assert load_plain_pickle(gf / "token_dictionary.pkl", "token dictionary") == full
    vocab = sd.GeneVocab.load(gf / "token_dictionary.pkl", allow_pickle="plain")
    assert len(vocab) == 25_426 and vocab.mask_id == 1
    medians = sd.load_medians(gf / "gene_median_dictionary.pkl", allow_pickle="plain")
    assert len(medians) > 20_000


@pytest.mark.parametrize("name", ["token_dictionary.pkl", "gene_median_dictionary.pkl"])
def test_planted_pickle_in_a_geneformer_folder_runs_nothing(shared_data, tmp_path, name):
    from transformers import BertConfig, BertForMaskedLM

    from stformer_train.geneformer import open_model

    folder = tmp_path / "gf"
    BertForMaskedLM(
        BertConfig(
            vocab_size=25_426,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ).save_pretrained(folder)
    for f in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / f, folder / f)
    marker = tmp_path / "it_ran"
    _plant(folder / name, marker)
    with pytest.raises(sd.InputError) as err:
        open_model(folder)._medians()  # the vocabulary is read on open, the medians on use
    assert not marker.exists()
    assert str(folder / name) in str(err.value) and "not plain data" in str(err.value)


def test_documented_loaders_refuse_a_planted_pickle_by_default(tmp_path):
    from stformer_train.hf import load_token_dictionary
    from stformer_train.hf._trainer import load_example_lengths

    marker = tmp_path / "it_ran"
    tokens, lengths = tmp_path / "tokens.pkl", tmp_path / "lengths.pkl"
    _plant(tokens, marker)
    lengths.write_bytes(pickle.dumps([3, 4, _Planted(marker)]))
    for load, path in ((load_token_dictionary, tokens), (load_example_lengths, lengths)):
        with pytest.raises(sd.InputError, match="not plain data"):
            load(path)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([3, 4, 5]))
    assert load_example_lengths(plain) == [3, 4, 5]  # the documented pickle still loads
