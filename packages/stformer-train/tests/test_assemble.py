"""The one assembly: every training path builds model, collator, early stopping and precision
from the same configs through ``stformer_train.assemble.assemble``."""

import dataclasses
import warnings

import pytest
import torch

import stformer_train.hf._pretrain as hf_pretrain
import stformer_train.hf._stformer as hf_stformer
import stformer_train.lightning._trainer as lightning_trainer
from stformer_collate import DataCollatorForMLM, SimpleTokenSpec
from stformer_train import PatienceStopping, Precision, TrainConfig, TrainingParts, assemble
from stformer_train.hf import pretrain_mlm
from stformer_train.lightning import pretrain_lightning

SPEC = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=60)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parts_follow_the_configs(tiny, tmp_path):
    train = TrainConfig(
        seed=7,
        mlm_probability=0.2,
        batch_form="packed",
        masked_positions_only=False,
        eval_fraction=0.1,
        early_stopping_patience=3,
        early_stopping_min_delta=0.01,
        mixed_precision="no",
    )
    parts = assemble(SPEC, tiny, train, monitor="val_loss", best_model_dir=tmp_path / "best")
    assert isinstance(parts, TrainingParts)
    assert parts.collator == DataCollatorForMLM(
        spec=SPEC, mlm_probability=0.2, seed=7, form="packed", return_masked_positions=False
    )
    assert parts.early_stopping == PatienceStopping(
        monitor="val_loss", patience=3, min_delta=0.01, checkpoint_path=tmp_path / "best"
    )
    assert parts.precision is Precision.FP32
    assert parts.model.config.vocab_size == 60 and parts.model.config.pad_token_id == 0
    assert parts.model.config.num_hidden_layers == tiny.num_layers
    assert (
        assemble(SPEC, tiny, dataclasses.replace(train, early_stopping_patience=0)).early_stopping
        is None
    )


def test_same_configs_give_identical_parts(tiny):
    train = TrainConfig(seed=11, mixed_precision="no")
    a, b = assemble(SPEC, tiny, train), assemble(SPEC, tiny, train)
    assert a.collator == b.collator and a.precision is b.precision
    assert _same_weights(_weights(a.model), _weights(b.model))
    other = assemble(SPEC, tiny, dataclasses.replace(train, seed=12))
    assert not _same_weights(_weights(a.model), _weights(other.model))


def test_unavailable_precision_warns_once_and_assembles_fp32(tiny):
    if torch.cuda.is_available():
        pytest.skip("the fallback is for machines without a CUDA GPU")
    with pytest.warns(RuntimeWarning, match="training in fp32") as record:
        parts = assemble(SPEC, tiny, TrainConfig(mixed_precision="bf16"))
    assert len(record) == 1 and parts.precision is Precision.FP32


def _recording(monkeypatch, module, seen):
    def spy(*args, **kwargs):
        parts = assemble(*args, **kwargs)
        seen.append((parts, _weights(parts.model)))
        return parts

    monkeypatch.setattr(module, "assemble", spy)


def test_hf_and_lightning_paths_get_identical_parts(tiny_corpus, tiny, tmp_path, monkeypatch):
    train = TrainConfig(
        max_steps=1,
        per_device_train_batch_size=8,
        eval_fraction=0.2,
        eval_steps=1,
        early_stopping_patience=2,
        early_stopping_min_delta=0.05,
        save_steps=100,
        seed=5,
    )
    hf_seen, pl_seen = [], []
    _recording(monkeypatch, hf_pretrain, hf_seen)
    _recording(monkeypatch, lightning_trainer, pl_seen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain_mlm(tiny_corpus, tmp_path / "hf", model=tiny, train=train, progress=False)
        pretrain_lightning(
            tiny_corpus, tmp_path / "pl", model=tiny, train=train, progress=False, accelerator="cpu"
        )
    (hf, hf_w), (pl, pl_w) = hf_seen[0], pl_seen[0]
    assert _same_weights(hf_w, pl_w)  # the same initial model
    assert hf.collator == pl.collator == assemble(tiny_corpus.vocab, tiny, train).collator
    assert hf.precision is pl.precision
    # the same early stopping; only the engine's name of the validation loss differs
    assert (hf.early_stopping.monitor, pl.early_stopping.monitor) == ("eval_loss", "val_loss")
    assert dataclasses.replace(hf.early_stopping, monitor="val_loss", checkpoint_path=None) == (
        dataclasses.replace(pl.early_stopping, checkpoint_path=None)
    )
    assert hf.early_stopping.checkpoint_path == tmp_path / "hf" / "best_model"


def test_pretrain_ml_assembles_from_its_train_config():
    ml = hf_stformer.PretrainML("d", "t.json", "l.pkl", "spot", "o", batch_size=4, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on CPU falls back to fp32
        train_config = ml.train_config
    assert train_config.per_device_train_batch_size == 4 and train_config.seed == 9
    assert train_config.warmup_steps == 10_000  # stFormer's documented default, kept
    parts = assemble(SPEC, ml.model_config, train_config)
    assert parts.collator == DataCollatorForMLM(
        spec=SPEC, mlm_probability=0.15, seed=9, return_masked_positions=True
    )


def test_pretrain_ml_runs_on_the_assembled_parts(tiny_corpus, tmp_path, monkeypatch):
    seen = []
    _recording(monkeypatch, hf_stformer, seen)
    ml = hf_stformer.PretrainML(
        dataset_path=str(tiny_corpus.path),
        token_dict_path=str(tiny_corpus.path / "token_dictionary.json"),
        example_lengths_path=str(tiny_corpus.path / "example_lengths.pkl"),
        mode="spot",
        output_dir=str(tmp_path),
        max_input=64,
        num_layers=1,
        embed_dim=32,
        num_heads=2,
        batch_size=8,
        disable_tqdm=True,
        training_args_overrides={"max_steps": 1, "save_steps": 1},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml.run_pretraining()
    trainer = ml.trainer
    (parts, weights), expected = (
        seen[0],
        None,
    )
    expected = assemble(parts.collator.spec, ml.model_config, ml.train_config)
    assert trainer.model is parts.model
    assert trainer.data_collator.collator == parts.collator == expected.collator
    assert _same_weights(weights, _weights(expected.model))
