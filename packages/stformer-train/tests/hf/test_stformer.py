import pickle

import pytest
import torch
from transformers import TrainerCallback

from stformer_collate import DataCollatorForMLM
from stformer_train import TrainConfig
from stformer_train.hf import (
    PretrainML,
    STFormerPretrainer,
    get_training_arguments,
    load_example_lengths,
    make_output_dirs,
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


def test_make_output_dirs_layout(tmp_path):
    dirs = make_output_dirs(tmp_path, "run1")
    assert dirs.training_output_dir == tmp_path / "models" / "run1"
    assert dirs.logging_dir == tmp_path / "runs" / "run1"
    assert dirs.model_output_dir.is_dir()
    (dirs.model_output_dir / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        make_output_dirs(tmp_path, "run1")


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


def test_get_training_arguments_defaults_and_overrides(tmp_path):
    args = get_training_arguments(tmp_path)
    assert (
        args.learning_rate,
        args.warmup_steps,
        args.weight_decay,
        args.per_device_train_batch_size,
    ) == (1e-3, 10_000, 0.001, 12)
    assert args.train_sampling_strategy == "group_by_length"
    args = get_training_arguments(
        tmp_path, overrides={"group_by_length": False, "learning_rate": 5e-4}
    )
    assert args.train_sampling_strategy == "random" and args.learning_rate == 5e-4


def test_pretrainer_requires_model(tmp_path):
    with pytest.raises(ValueError, match="model or a model_init"):
        STFormerPretrainer(args=get_training_arguments(tmp_path))


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
        model=net,
        args=get_training_arguments(tmp_path, per_device_train_batch_size=8),
        train_dataset=ds,
        example_lengths_file=tmp_path / "lengths.pkl",
        data_collator=DataCollatorForMLM(spec=tiny_corpus.vocab, seed=0),
    )
    sampler = trainer._get_train_sampler()
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
        model=net,
        args=get_training_arguments(tmp_path),
        example_lengths=[3, 4],
        train_dataset=tiny_corpus.dataset.select_columns(["input_ids"]),
    )
    with pytest.raises(ValueError, match="example lengths"):
        trainer._get_train_sampler()


def test_pretrain_ml_neighborhood_doubles_and_trains(tiny_corpus, tmp_path):
    assert (
        PretrainML(
            dataset_path="d", example_lengths_file="l", token_dictionary_file="t", output_dir="o"
        ).max_input
        == 2048
    )
    with pytest.raises(ValueError, match="mode"):
        PretrainML(
            dataset_path="d",
            example_lengths_file="l",
            token_dictionary_file="t",
            output_dir="o",
            mode="cells",
        )
    p = PretrainML(
        dataset_path=tiny_corpus.path,
        example_lengths_file=tiny_corpus.path / "example_lengths.pkl",
        token_dictionary_file=tiny_corpus.path / "token_dictionary.json",
        output_dir=tmp_path,
        run_name="t",
        mode="neighborhood",
        max_input=32,
        num_layers=1,
        num_embed_dim=32,
        num_attn_heads=2,
        intermed_size=64,
        batch_size=8,
        warmup_steps=0,
        training_overrides={"max_steps": 3, "save_steps": 3, "disable_tqdm": True},
    )
    assert p.max_input == 64
    trainer = p.run_pretraining()
    assert trainer.state.global_step == 3
    assert trainer.model.config.max_position_embeddings == 64
    assert (tmp_path / "models" / "t" / "models" / "model.safetensors").is_file()


def test_pretrain_ml_takes_a_ready_deepspeed_config_only():
    kw = dict(dataset_path="d", example_lengths_file="l", token_dictionary_file="t", output_dir="o")
    config = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
    assert PretrainML(**kw, deepspeed=config).training_overrides["deepspeed"] == config
    assert PretrainML(**kw, deepspeed="ds.json").training_overrides["deepspeed"] == "ds.json"
    assert "deepspeed" not in PretrainML(**kw).training_overrides
    for bad in (True, 2):
        with pytest.raises(ValueError, match="stformer_dist.PretrainML"):
            PretrainML(**kw, deepspeed=bad)


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
