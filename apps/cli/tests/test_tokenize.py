from __future__ import annotations

import json

import pytest

from stformer_cli.main import cli
from stformer_data import load_corpus, simulate_counts


@pytest.mark.shared_data
def test_tokenize_every_real_sc_file_with_geneformer_dictionaries(shared_data, tmp_path):
    gf = shared_data / "geneformer_30M"
    for f in sorted((shared_data / "sc").glob("*.h5ad")):
        out = tmp_path / f.stem
        args = ["tokenize", str(f), "--out", str(out), "--no-progress", "--model-input-size", "512"]
        if "mouse" in f.name:  # mouse Ensembl ids: vocabulary and medians from the data itself
            args += ["--add-cls"]
        else:
            args += [
                "--vocab",
                str(gf / "token_dictionary.pkl"),
                "--medians",
                str(gf / "gene_median_dictionary.pkl"),
                "--name-to-id",
                str(gf / "gene_name_id_dict.pkl"),
                "--allow-pickle",
            ]
        assert cli(args) == 0, f.name
        corpus = load_corpus(out)
        c = corpus.manifest["counts"]
        assert c["cells_written"] > 0.9 * c["cells_in"]
        assert max(corpus.lengths) <= 512
        if "mouse" in f.name:
            assert all(row[0] == corpus.vocab.cls_id for row in corpus.dataset[:20]["input_ids"])


@pytest.mark.shared_data
def test_neighborhood_mode_on_every_real_spatial_file(shared_data, tmp_path):
    for f in sorted((shared_data / "spatial").glob("*.h5ad")):
        out = tmp_path / f.stem
        args = ["tokenize", str(f), "--out", str(out), "--mode", "neighborhood", "--no-progress"]
        if "paste" in f.name:
            args += ["--section-key", "slice"]
        assert cli(args) == 0, f.name
        m = json.loads((out / "manifest.json").read_text())
        assert m["mode"] == "neighborhood" and m["max_length"] == 4096


def test_binned_with_phenotypes_and_medians_command(tmp_path):
    adata = simulate_counts(n_cells=120, n_genes=60, program_size=5, seed=2)
    f = tmp_path / "a.h5ad"
    adata.write_h5ad(f)
    assert cli(["medians", str(f), "--out", str(tmp_path / "m.json")]) == 0
    assert cli(["medians", str(f), "--out", str(tmp_path / "e.json"), "--exact"]) == 0
    assert len(json.loads((tmp_path / "m.json").read_text())) == 60
    assert (
        cli(
            [
                "tokenize",
                str(f),
                "--out",
                str(tmp_path / "b"),
                "--scheme",
                "binned",
                "--phenotypes",
                "cell_type",
                "--obs-columns",
                "section,niche",
                "--num-proc",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    corpus = load_corpus(tmp_path / "b")
    assert {"token_type_ids", "section", "niche"} <= set(corpus.dataset.column_names)
    assert (
        cli(
            [
                "tokenize",
                str(f),
                "--out",
                str(tmp_path / "r"),
                "--medians",
                str(tmp_path / "e.json"),
                "--no-progress",
            ]
        )
        == 0
    )


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    adata = simulate_counts(n_cells=20, n_genes=30, program_size=5, seed=2)
    adata.X = adata.X * 0.5
    f = tmp_path / "a.h5ad"
    adata.write_h5ad(f)
    assert cli(["tokenize", str(f), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "non-integer" in err and "--allow-non-integer" in err
    assert not (tmp_path / "c").exists()
    assert cli(["tokenize", str(f), "--out", str(tmp_path / "c"), "--scheme", "words"]) == 2
