"""STEP's trainer API as document 002 (``step.functionality.comps.trainer``) specifies it."""

from __future__ import annotations

import inspect

import anndata
import numpy as np
import pytest
import torch

import stformer_data
import stformer_train
from stformer_train.step import (
    BaseDataset,
    EarlyStopping,
    MaskedDataset,
    Trainer,
    category_random_split,
    train_loop_formatter,
)

# the documented default, taken before any test runs: Ray replaces builtins.print in a process
# where it was started (its safe_print), and earlier tests in the same session start Ray
_BUILTIN_PRINT = print

PBMC = "sc/pbmc68k_reduced_700_counts.h5ad"


@pytest.fixture(scope="module")
def pbmc(shared_data):
    adata = anndata.io.read_h5ad(shared_data / PBMC)
    adata.X = np.log1p(adata.X.toarray()).astype(np.float32)
    return adata


class AutoEncoder(torch.nn.Module):
    """A TranscriptFormer-style model: ``loss`` returns a dict of named losses."""

    def __init__(self, n_genes: int, n_types: int, hidden: int = 16):
        super().__init__()
        self.enc = torch.nn.Linear(n_genes, hidden)
        self.dec = torch.nn.Linear(hidden, n_genes)
        self.head = torch.nn.Linear(hidden, n_types)

    def loss(self, x, cell_type=None):
        z = torch.relu(self.enc(x))
        out = {"recon": torch.nn.functional.mse_loss(self.dec(z), x)}
        if cell_type is not None:
            out["cls"] = torch.nn.functional.cross_entropy(self.head(z), cell_type.long())
        return out


def test_signatures_match_the_document():
    sig = inspect.signature(EarlyStopping)
    assert [(p.name, p.default) for p in sig.parameters.values()] == [
        ("patience", 7),
        ("verbose", False),
        ("delta", 0),
        ("path", "checkpoint.pt"),
        ("trace_func", _BUILTIN_PRINT),
    ]
    init = inspect.signature(Trainer.init_optimizer).parameters
    assert {k: v.default for k, v in init.items() if k != "self"} == {
        "lr": 0.001,
        "tune_lr": 0.0001,
        "stage": 1,
        "tune_batch_embedding": True,
    }
    assert inspect.signature(Trainer.set_lr_scheduler).parameters["lr_scheduler"].default is None
    cum = inspect.signature(Trainer.cum_loss).parameters
    assert (cum["use_earlystop"].default, cum["n_batch"].default, cum["n_epoch"].default) == (
        False,
        -1,
        -1,
    )
    train = inspect.signature(Trainer.train).parameters
    assert list(train)[:6] == ["self", "state", "X", "train_ind", "valid_ind", "call_func"]
    assert train["train_ind"].default is None and train["valid_ind"].default is None
    make = inspect.signature(Trainer.make_loaders).parameters
    assert list(make)[:5] == ["dataset", "batch_size", "split_rate", "shuffle", "obs_key"]
    assert (make["split_rate"].default, make["shuffle"].default, make["obs_key"].default) == (
        0.2,
        True,
        None,
    )
    assert isinstance(inspect.getattr_static(Trainer, "make_loaders"), staticmethod)
    split = inspect.signature(category_random_split).parameters
    assert (split["split_rate"].default, split["obs_key"].default) == (0.2, None)
    for name in (
        "mode_switch_to_train",
        "update_model_params",
        "setup_early_stopping",
        "check_early_stop",
        "format_loss_dict",
        "split_X",
        "handle_input_tuple",
        "handle_ginput_tuple",
        "train_batch",
        "train_node_sampler",
        "train_graph_batch",
        "validate_loader",
        "validate_X",
        "validate_gloader",
    ):
        assert callable(getattr(Trainer, name)), name
    assert callable(train_loop_formatter)


def test_documented_name_is_steps_class_at_every_export_point():
    assert stformer_train.EarlyStopping is EarlyStopping
    assert stformer_data.category_random_split is category_random_split
    assert stformer_train.PatienceStopping is not EarlyStopping


def test_early_stopping_counter_reset_and_checkpoint_file(tmp_path):
    messages: list[str] = []
    path = tmp_path / "best.pt"
    model = torch.nn.Linear(2, 1)
    es = EarlyStopping(patience=2, verbose=True, path=str(path), trace_func=messages.append)
    es(1.0, model)
    assert path.is_file() and es.best_score == -1.0 and es.val_loss_min == 1.0
    es(1.5, model)
    assert es.counter == 1 and not es.early_stop
    es(0.5, model)  # a later improvement resets the counter
    assert es.counter == 0 and es.val_loss_min == 0.5
    state = torch.load(path)
    assert set(state) == {"weight", "bias"}
    es(0.6, model)
    es(0.7, model)
    assert es.early_stop and es.counter == 2
    assert any("Saving model" in m for m in messages)
    assert any("EarlyStopping counter: 1 out of 2" in m for m in messages)


def test_early_stopping_delta():
    es = EarlyStopping(patience=1, delta=0.1, path=None)
    es(1.0, None)
    es(0.95, None)  # not better by more than delta
    assert es.early_stop


def test_category_random_split_is_stratified_within_each_category(pbmc):
    ds = BaseDataset(pbmc)
    train, valid = category_random_split(ds, split_rate=0.2, obs_key="bulk_labels")
    assert isinstance(train, MaskedDataset) and isinstance(valid, MaskedDataset)
    assert len(train) + len(valid) == pbmc.n_obs
    assert not set(train.indices) & set(valid.indices)
    counts = pbmc.obs["bulk_labels"].value_counts()
    got = valid.adata.obs["bulk_labels"].value_counts()
    for category, n in counts.items():  # every category is in both parts, in its share
        assert 1 <= got[category] < n
        assert abs(got[category] - 0.2 * n) <= 1
    t, v = category_random_split(ds, 0.3)  # no obs_key: a plain random split
    assert len(v) == 210 and len(t) == 490


def test_stformer_grouped_split_keeps_its_own_name():
    out = stformer_data.grouped_random_split(["a"] * 8 + ["b"] * 2 + ["c"] * 2, (0.8, 0.1, 0.1))
    assert sorted(sum(out.values(), [])) == ["a", "b", "c"]


def test_make_loaders_and_train_batch_with_validation(pbmc, tmp_path):
    torch.manual_seed(0)
    ds = BaseDataset(pbmc, obs_keys=("bulk_labels",))
    train_loader, valid_loader = Trainer.make_loaders(ds, 64, split_rate=0.2, obs_key="bulk_labels")
    assert len(train_loader.dataset) + len(valid_loader.dataset) == 700
    x, cell_type = next(iter(train_loader))
    assert x.shape == (64, pbmc.n_vars) and cell_type.dtype == torch.int64
    model = AutoEncoder(pbmc.n_vars, len(ds.categories["bulk_labels"]))
    trainer = Trainer(model)
    assert trainer.defualt_lcfg["patience"] == 7
    trainer.lossconfig = {
        "recon": {"patience": 2},
        "cls": {"patience": 2, "path": str(tmp_path / "cls.pt")},
    }
    trainer.init_optimizer(lr=1e-2)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    trainer.set_lr_scheduler()
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.MultiStepLR)
    lines: list[str] = []
    state = {"n_epochs": 4, "trace_func": lines.append}
    stopped = trainer.train_batch(state, (train_loader, valid_loader))
    assert stopped is False and len(state["history"]) == 4
    assert set(trainer.early_stopping) == {"recon", "cls"}
    assert set(state["history"][-1]["valid"]) == {"val_recon", "val_cls"}
    assert state["history"][-1]["train"]["cls"] < state["history"][0]["train"]["cls"]
    assert (tmp_path / "cls.pt").is_file()
    assert any("val_cls" in line for line in lines)


def test_stops_only_when_all_monitored_losses_stall():
    trainer = Trainer(torch.nn.Linear(1, 1))
    trainer.lossconfig = {"a": {"patience": 1}, "b": {"patience": 1}}
    trainer.setup_early_stopping({"a": 0.0, "b": 0.0})
    es_a, es_b = trainer.early_stopping["a"], trainer.early_stopping["b"]
    for v in (1.0, 2.0):  # a stalls
        es_a(v, None)
    for v in (1.0, 0.5):  # b improves
        es_b(v, None)
    assert es_a.early_stop and not es_b.early_stop
    assert trainer.check_early_stop({"a": 2.0, "b": 0.5}) is False
    es_b(0.9, None)
    assert trainer.check_early_stop({"a": 2.0, "b": 0.9}) is True


class Stalling(torch.nn.Module):
    """Two losses: ``fast`` stalls at once, ``slow`` keeps improving for a while."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(3.0))
        self.calls = 0

    def loss(self, x):
        return {"fast": (x.mean() * 0 + 1.0) + 0 * self.w, "slow": (self.w - 1.0) ** 2}


def test_train_on_X_runs_until_every_loss_stalls():
    torch.manual_seed(0)
    trainer = Trainer(Stalling())
    trainer.lossconfig = {"fast": {"patience": 2}, "slow": {"patience": 2, "delta": 1e-3}}
    trainer.init_optimizer(lr=0.05)
    state = {"n_epochs": 500, "batch_size": 32, "trace_func": lambda *a: None}
    stopped = trainer.train(state, torch.randn(64, 4))
    assert stopped is True
    n = len(state["history"])
    assert 5 < n < 500  # "fast" stalled after 3 epochs; the run went on until "slow" stalled too
    assert trainer.early_stopping["fast"].early_stop and trainer.early_stopping["slow"].early_stop


def test_train_x_with_indices_and_validate_x():
    X = torch.randn(50, 4)
    model = AutoEncoder(4, 2)
    trainer = Trainer(model)
    state = {"n_epochs": 2, "batch_size": 10, "trace_func": lambda *a: None}
    assert (
        trainer.train(state, X, train_ind=list(range(40)), valid_ind=list(range(40, 50))) is False
    )
    assert set(trainer.validate_X(X, list(range(40, 50)))) == {"val_recon"}
    train, valid = trainer.split_X(X, 0.2)
    assert train.shape == (40, 4) and valid.shape == (10, 4)


def test_unknown_loss_config_key_names_the_nearest():
    trainer = Trainer(AutoEncoder(4, 2))
    trainer.lossconfig = {"recon": {"patiense": 3}}
    with pytest.raises(TypeError, match="patience"):
        trainer.setup_early_stopping({"recon": 1.0})


def test_cum_loss_and_format():
    trainer = Trainer(torch.nn.Linear(1, 1))
    total: dict = {}
    trainer.cum_loss({"a": torch.tensor(1.0)}, total)
    trainer.cum_loss({"a": torch.tensor(3.0)}, total, use_earlystop=True, n_batch=2, n_epoch=0)
    assert total == {"a": 2.0} and "a" in trainer.early_stopping
    text = trainer.format_loss_dict(total, {"epoch": 0, "n_epochs": 5}, {"val_a": 1.5}, True)
    assert "epoch 1/5" in text and "a 2.0000" in text and "val_a 1.5000" in text


class GraphModel(torch.nn.Module):
    """A one-layer graph model: mean over neighbours, loss at the nodes ``ind``."""

    def __init__(self, n_in: int):
        super().__init__()
        self.lin = torch.nn.Linear(n_in, n_in)

    def loss(self, x, edge_index, ind=None):
        agg = torch.zeros_like(x).index_add_(0, edge_index[1], x[edge_index[0]])
        err = ((self.lin(agg) - x) ** 2).mean(1)
        return {"recon": err.mean() if ind is None else err[ind].mean()}


def test_graph_training_paths():
    torch.manual_seed(0)
    x = torch.randn(30, 3)
    edges = torch.stack([torch.arange(30), (torch.arange(30) + 1) % 30])
    graph = (x, edges)
    trainer = Trainer(GraphModel(3))
    state = {"n_epochs": 3, "trace_func": lambda *a: None}
    assert (
        trainer.train_graph_batch(
            state, [graph], train_ind=torch.arange(20), valid_ind=torch.arange(20, 30)
        )
        is False
    )
    assert "val_recon" in trainer.validate_gloader([graph], torch.arange(20, 30))
    sub = (x[:10], torch.stack([torch.arange(9), torch.arange(1, 10)]), torch.arange(10))
    trainer2 = Trainer(GraphModel(3))
    state2 = {"n_epochs": 2, "trace_func": lambda *a: None}
    assert (
        trainer2.train_node_sampler(state2, [sub], graph, torch.arange(20), torch.arange(20, 30))
        is False
    )
    assert "valid" in state2["history"][-1]
    losses = trainer2.handle_ginput_tuple(graph, torch.arange(5), None)
    assert set(losses) == {"recon"}


def test_stage_two_tunes_batch_embedding_at_lr():
    class WithBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.core = torch.nn.Linear(2, 2)
            self.batch_embedding = torch.nn.Embedding(3, 2)

    trainer = Trainer(WithBatch())
    opt = trainer.init_optimizer(lr=1e-3, tune_lr=1e-5, stage=2)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    trainer.init_optimizer(stage=2, tune_batch_embedding=False)
    assert not trainer.model.batch_embedding.weight.requires_grad
