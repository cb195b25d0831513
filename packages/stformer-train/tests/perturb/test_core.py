"""The fast path against a plain per-cell implementation of Geneformer's procedure."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from stformer_train.perturb import PerturbSpec, PooledEncoder, perturb_batch, perturb_tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act="relu",
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return BertForMaskedLM(cfg).eval()


def _cells(seed=0, n=5, cls=None, eos=None):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        genes = rng.choice(np.arange(4, 60), size=int(rng.integers(3, 20)), replace=False)
        out.append(
            np.concatenate([[cls] if cls else [], genes, [eos] if eos else []]).astype(np.int64)
        )
    return out


@torch.no_grad()
def _plain(model, tokens, layer, specials):
    """Full forward, all hidden states, mean over the non-special tokens (Geneformer's procedure)."""
    ids = torch.as_tensor(tokens)[None]
    h = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
    keep = ~torch.isin(ids[0], torch.as_tensor(specials))
    return h[keep].mean(0)


@pytest.mark.parametrize("kind", ["delete", "overexpress", "inhibit", "activate"])
@pytest.mark.parametrize("frame", [False, True])
def test_every_kind_matches_the_plain_procedure(model, kind, frame):
    cls, eos = (2, 3) if frame else (None, None)
    specials = [0, 2, 3]
    cells = _cells(cls=cls, eos=eos)
    enc = PooledEncoder(model, hidden_layer=-2, special_ids=specials, device="cpu")
    spec = PerturbSpec(perturbation=kind, genes="all", rank_shift=2)
    res = perturb_batch(enc, cells, spec, cls_id=cls, eos_id=eos, tokens_per_batch=50)
    expected = []
    for i, c in enumerate(cells):
        pre, genes, post = (c[:1], c[1:-1], c[-1:]) if frame else (c[:0], c, c[:0])
        orig = _plain(model, c, -2, specials)
        for g in genes:
            p = perturb_tokens(genes, [g], kind, rank_shift=2, max_genes=62)
            emb = _plain(model, np.concatenate([pre, p, post]), -2, specials)
            expected.append((i, (int(g),), float(torch.cosine_similarity(emb, orig, dim=0))))
    got = sorted(zip(res.cell, res.perturbed, res.cos_sim, strict=True))
    expected.sort()
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], atol=2e-6)


def test_combination_goal_and_gene_shifts(model):
    cells = _cells(seed=1, n=4)
    enc = PooledEncoder(model, hidden_layer=-1, special_ids=[0], device="cpu")
    g1, g2 = int(cells[0][0]), int(cells[0][1])
    spec = PerturbSpec(perturbation="delete", genes=(g1, g2), combine=True, gene_shifts=True)
    goal = np.ones(32, dtype=np.float32)
    res = perturb_batch(enc, cells, spec, goal=goal)
    # only cells that express at least one of the genes are perturbed, once each
    expressing = [i for i, c in enumerate(cells) if np.isin(c, [g1, g2]).any()]
    assert res.cell == expressing and all(p == (g1, g2) for p in res.perturbed)
    c = cells[0]
    orig = _plain(model, c, -1, [0])
    pert = _plain(model, c[2:], -1, [0])
    assert res.cos_sim[0] == pytest.approx(
        float(torch.cosine_similarity(pert, orig, dim=0)), abs=2e-6
    )
    g = torch.as_tensor(goal)
    assert res.goal_cos_before[0] == pytest.approx(
        float(torch.cosine_similarity(orig, g, dim=0)), abs=2e-6
    )
    assert res.goal_cos_after[0] == pytest.approx(
        float(torch.cosine_similarity(pert, g, dim=0)), abs=2e-6
    )
    # gene shifts of cell 0: every other gene, its hidden state before vs after
    rows = np.concatenate(res.shift_row)
    genes = np.concatenate(res.shift_gene)[rows == 0]
    assert sorted(genes.tolist()) == sorted(c[2:].tolist())
    with torch.no_grad():
        h0 = model(input_ids=torch.as_tensor(c)[None], output_hidden_states=True).hidden_states[-1][
            0
        ]
        h1 = model(input_ids=torch.as_tensor(c[2:])[None], output_hidden_states=True).hidden_states[
            -1
        ][0]
    j = int(genes[0])
    want = torch.cosine_similarity(h1[list(c[2:]).index(j)], h0[list(c).index(j)], dim=0)
    assert np.concatenate(res.shift_cos)[rows == 0][0] == pytest.approx(float(want), abs=2e-6)


def test_spec_validation():
    with pytest.raises(ValueError, match="perturbation must be one of"):
        PerturbSpec(perturbation="knockdown")
    with pytest.raises(ValueError, match="combine=True needs a list"):
        PerturbSpec(combine=True)
    with pytest.raises(ValueError, match="empty"):
        PerturbSpec(genes=())


@pytest.mark.parametrize("kind", ["delete", "overexpress"])
def test_batches_run_side_by_side_give_the_serial_result(model, kind):
    """Workers change where batches run, not what comes out (rows, order, gene shifts, goal)."""
    cells = _cells(seed=4, n=7)
    spec = PerturbSpec(perturbation=kind, genes="all", gene_shifts=True)
    goal = np.linspace(-1, 1, 32, dtype=np.float32)
    threads = torch.get_num_threads()
    out = {}
    for workers in (1, 3):
        enc = PooledEncoder(model, hidden_layer=-2, special_ids=[0], device="cpu", workers=workers)
        out[workers] = perturb_batch(enc, cells, spec, goal=goal, tokens_per_batch=40)
        assert torch.get_num_threads() == threads  # restored after the parallel section
    serial, parallel = out[1], out[3]
    assert parallel.cell == serial.cell and parallel.perturbed == serial.perturbed
    np.testing.assert_allclose(parallel.cos_sim, serial.cos_sim, atol=1e-6)
    np.testing.assert_allclose(parallel.goal_cos_after, serial.goal_cos_after, atol=1e-6)
    for name in ("shift_row", "shift_gene"):
        np.testing.assert_array_equal(
            np.concatenate(getattr(parallel, name)), np.concatenate(getattr(serial, name))
        )
    np.testing.assert_allclose(
        np.concatenate(parallel.shift_cos), np.concatenate(serial.shift_cos), atol=1e-6
    )
    with pytest.raises(ValueError, match="workers"):
        PooledEncoder(model, device="cpu", workers=0)
