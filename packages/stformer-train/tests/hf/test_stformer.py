import pickle

import pytest
import torch
from transformers import TrainerCallback

from stformer_collate import DataCollatorForMLM
from stformer_train import TrainConfig
from stformer_train.hf import (
    STFormerPretrainer,
    get_training_arguments,
    load_example_lengths,
    pretrain_mlm,
    setup_environment,
)
from stformer_train.models import bert_config_from, build_mlm_model
from stformer_train.training import EpochLengthGroupedSampler


def test_setup_environment_seeds_torch():
    setup_environment(7)
    a = torch.rand(3)
    setup_environment(7)
    assert torch.equal(a, torch.rand(3))


def test_load_example_lengths_pickle_json_and_errors(tmp_path):
    (tmp_path / "l.pkl").write_bytes(pickle.dumps([3, 5, 2]))
    (tmp_path / "l.json").write_text("[4, 1]")
    assert load_example_lengths(tmp_path / "l.pkl") == [3, 5, 2]
    assert load_example_lengths(tmp_path / "l.json") == [4, 1]
    (tmp_path / "bad.json").write_text('["a"]')
    with pytest.raises(ValueError, match="positive ints"):
        load_example_lengths(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_example_lengths(tmp_path / "missing.pkl")


def _args(tmp_path, **overrides):
    return get_training_arguments(
        tmp_path,
        tmp_path / "logs",
        96,
        8,
        1e-3,
        1,
        0.0,
        0,
        "linear",
        "adamw_torch",
        True,
        False,
        "length",
        True,
        False,
        True,
        overrides,
    )


def test_train_sampler_uses_example_lengths_file(tiny_corpus, tiny, tmp_path, monkeypatch):
    ds = tiny_corpus.dataset.select_columns(["input_ids"])
    # lengths in the file deliberately differ from the real ones: the sampler must follow the file
    fake = [(i * 37) % 101 + 1 for i in range(len(ds))]
    (tmp_path / "lengths.pkl").write_bytes(pickle.dumps(fake))
    calls = []
    original = EpochLengthGroupedSampler.__init__

    def spy(self, batch_size, lengths, *, seed=0):
        calls.append(list(lengths))
        original(self, batch_size, lengths, seed=seed)

    monkeypatch.setattr(EpochLengthGroupedSampler, "__init__", spy)
    net = build_mlm_model(bert_config_from(tiny, vocab_size=len(tiny_corpus.vocab)), seed=0)
    trainer = STFormerPretrainer(
        _args(tmp_path),
        ds,
        dict(tiny_corpus.vocab),
        tmp_path / "lengths.pkl",
        model=net,
        data_collator=DataCollatorForMLM(spec=tiny_corpus.vocab, seed=0),
    )
    sampler = trainer.get_train_sampler()
    assert calls == [fake]
    order = list(iter(sampler))
    assert sorted(order) == list(range(len(ds)))
    # the first batch of a length-grouped order holds the longest example (by the file's lengths)
    assert max(fake[i] for i in order[:8]) == max(fake)
    spread = [
        max(fake[i] for i in order[s : s + 8]) - min(fake[i] for i in order[s : s + 8])
        for s in range(0, 96, 8)
    ]
    assert sum(spread) / len(spread) < 40  # random batches of 8 from 1..101 spread ~80
    # and the Trainer's dataloader really uses it
    assert isinstance(
        trainer.get_train_dataloader().batch_sampler.sampler, EpochLengthGroupedSampler
    )


def test_lengths_must_match_dataset(tiny_corpus, tiny, tmp_path):
    net = build_mlm_model(bert_config_from(tiny, vocab_size=len(tiny_corpus.vocab)), seed=0)
    trainer = STFormerPretrainer(
        _args(tmp_path),
        tiny_corpus.dataset.select_columns(["input_ids"]),
        dict(tiny_corpus.vocab),
        None,
        model=net,
        example_lengths=[3, 4],
    )
    with pytest.raises(ValueError, match="example lengths"):
        trainer.get_train_sampler()


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def _loss_at(history, step):
    return next(h["loss"] for h in history if h.get("step") == step and "loss" in h)


def test_resume_continues_the_same_loss_curve(tiny_corpus, tiny, tmp_path):
    train = TrainConfig(
        max_steps=20,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_steps=10,
        warmup_steps=2,
        seed=3,
    )
    straight = pretrain_mlm(tiny_corpus, tmp_path / "a", model=tiny, train=train, progress=False)
    first = pretrain_mlm(
        tiny_corpus,
        tmp_path / "b",
        model=tiny,
        train=train,
        progress=False,
        callbacks=[_KillAt(10)],
    )
    assert first.global_step == 10
    resumed = pretrain_mlm(tiny_corpus, tmp_path / "b", model=tiny, train=train, progress=False)
    assert resumed.global_step == 20
    assert _loss_at(resumed.log_history, 20) == pytest.approx(
        _loss_at(straight.log_history, 20), rel=1e-4
    )
    assert _loss_at(resumed.log_history, 15) == pytest.approx(
        _loss_at(straight.log_history, 15), rel=1e-4
    )


def test_hf_validation_loss_and_early_stopping(tiny_corpus, tiny, tmp_path):
    train = TrainConfig(
        max_steps=40,
        per_device_train_batch_size=8,
        logging_steps=5,
        save_steps=5,
        eval_fraction=0.2,
        early_stopping_patience=1,
        early_stopping_min_delta=10.0,
    )
    out = pretrain_mlm(tiny_corpus, tmp_path / "r", model=tiny, train=train, progress=False)
    evals = [h for h in out.log_history if "eval_loss" in h]
    assert len(evals) == 2 and out.global_step == 10
    assert (out.run.root / "best_model" / "config.json").is_file()
    assert (out.run.logs / "metrics.csv").read_text().count("\n") >= 3
