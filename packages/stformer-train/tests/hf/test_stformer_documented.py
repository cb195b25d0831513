"""stFormer's pretraining API, called exactly as its two documents print it.

Written from ``../shared/seeds/000_80bf747b479ccc1e.txt`` (the API reference) and
``001_d62d1c64da7661dd.txt`` (the pretraining page), not from the implementation: every name,
parameter, default and return type below is the document's. The one change a ported script makes
is the import line. DeepSpeed runs are in ``stformer-dist/tests/test_stformer_documented_deepspeed.py``.
"""

from __future__ import annotations

import inspect
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BatchEncoding,
    BertConfig,
    BertForMaskedLM,
    TrainingArguments,
)

# stFormer: from pretrainer_refactored / stformer_pretrainer import ...
from stformer_train.hf import (
    PretrainML,
    STFormerPreCollator,
    STFormerPretrainer,
    build_bert_config,
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    choose_closest,
    get_training_arguments,
    load_example_lengths,
    make_output_dirs,
    run_hyperparameter_train,
    setup_environment,
)

pytestmark = pytest.mark.shared_data


def _tokenize(out: Path, h5ad: Path, mode: str):
    import stformer_data as sd

    adata = sd.open_h5ad(h5ad, backed=False)
    return sd.tokenize_files(
        [h5ad],
        out,
        vocab=sd.GeneVocab.from_genes(sd.resolve_gene_ids(adata.var)),
        medians=sd.compute_medians_exact([h5ad]),
        config=sd.TokenizeConfig(mode=mode, rank=sd.RankTokenizerConfig(model_input_size=16)),
        progress=False,
    )


@pytest.fixture(scope="module")
def spot(shared_data, tmp_path_factory):
    """pbmc68k (700 cells) as a Hugging Face dataset, a token-dictionary pickle, a lengths pickle."""
    c = _tokenize(
        tmp_path_factory.mktemp("spot") / "c",
        shared_data / "sc/pbmc68k_reduced_700_counts.h5ad",
        "spot",
    )
    return (
        str(c.path / "dataset"),
        str(c.path / "token_dictionary.pkl"),
        str(c.path / "example_lengths.pkl"),
    )


@pytest.fixture(scope="module")
def neighborhood(shared_data, tmp_path_factory):
    c = _tokenize(
        tmp_path_factory.mktemp("hood") / "c",
        shared_data / "spatial/mouse_cortex_ccc_1073_orgaccc.h5ad",
        "neighborhood",
    )
    return (
        str(c.path / "dataset"),
        str(c.path / "token_dictionary.pkl"),
        str(c.path / "example_lengths.pkl"),
    )


def _token_dict(path: str) -> dict[str, int]:
    with open(path, "rb") as fh:
        return pickle.load(fh)


TINY = dict(
    num_layers=2,
    num_heads=2,
    embed_dim=32,
    max_input=16,
    batch_size=16,
    warmup_steps=0,
    epochs=1,
    disable_tqdm=True,
    fp16=False,
)


# --- utility functions ------------------------------------------------------------------------
def test_load_example_lengths(tmp_path):
    (tmp_path / "lengths.pkl").write_bytes(pickle.dumps([5, 3, 9]))
    assert load_example_lengths(file_path=tmp_path / "lengths.pkl") == [5, 3, 9]
    assert load_example_lengths(str(tmp_path / "lengths.pkl")) == [5, 3, 9]


def test_setup_environment_seeds_torch():
    assert setup_environment(seed=3) is None
    a = torch.rand(4)
    setup_environment(3)
    assert torch.equal(a, torch.rand(4))


def test_make_output_dirs_returns_the_three_paths(tmp_path):
    dirs = make_output_dirs(output_dir=tmp_path, run_name="run1")
    assert isinstance(dirs, dict) and set(dirs) == {"training", "logging", "model"}
    assert all(isinstance(p, Path) and p.is_dir() for p in dirs.values())
    assert len(set(dirs.values())) == 3


def test_choose_closest():
    assert choose_closest("adamw", ["Adam", "AdamW"]) == "AdamW"
    assert choose_closest(name="Adam_W", supported=["Adam", "AdamW", "Lamb"], cutoff=0.4) == "AdamW"
    with pytest.raises(ValueError):
        choose_closest("onebitadam", ["Adam"], unsupported=["OneBitAdam"])
    with pytest.raises(ValueError):
        choose_closest("zzzzzz", ["Adam", "Lamb"])


def test_check_deepspeed_names():
    assert check_deepspeed_optimizer(optimizer_type="AdamW") == "AdamW"
    assert check_deepspeed_optimizer("Adam") == "Adam"
    assert check_deepspeed_scheduler(lr_scheduler_type="WarmupLR") == "WarmupLR"
    with pytest.raises(ValueError):
        check_deepspeed_optimizer("not-an-optimizer-at-all")
    with pytest.raises(ValueError):
        check_deepspeed_scheduler("qqqqqqqq")


def test_build_bert_config_uses_every_argument():
    cfg = build_bert_config(
        model_type="bert",
        num_layers=2,
        num_heads=2,
        embed_dim=32,
        max_input=64,
        pad_id=0,
        vocab_size=97,
    )
    assert isinstance(cfg, BertConfig)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (2, 2, 32)
    assert (cfg.max_position_embeddings, cfg.pad_token_id, cfg.vocab_size) == (64, 0, 97)
    # the documented defaults
    assert (cfg.hidden_act, cfg.initializer_range, cfg.layer_norm_eps) == ("relu", 0.02, 1e-12)
    assert (cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob) == (0.02, 0.02)
    cfg = build_bert_config("bert", 3, 4, 64, 128, 1, 50, "gelu", 0.05, 1e-6, 0.1, 0.2)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (3, 4, 64)
    assert (cfg.max_position_embeddings, cfg.pad_token_id, cfg.vocab_size) == (128, 1, 50)
    assert (cfg.hidden_act, cfg.initializer_range, cfg.layer_norm_eps) == ("gelu", 0.05, 1e-6)
    assert (cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob) == (0.1, 0.2)
    with pytest.raises(TypeError, match="num_heads"):
        build_bert_config("bert", 2, num_head=2, embed_dim=32, max_input=8, pad_id=0, vocab_size=9)


def _training_kwargs(tmp_path, **changes):
    kw = dict(
        output_dir=tmp_path / "out",
        logging_dir=tmp_path / "logs",
        train_dataset_length=640,
        batch_size=8,
        learning_rate=5e-4,
        epochs=2,
        weight_decay=0.01,
        warmup_steps=7,
        lr_scheduler_type="cosine",
        optimizer_type="adamw_torch",
        do_train=True,
        do_eval=False,
        length_column_name="length",
        disable_tqdm=True,
        fp16=False,
        group_by_length=True,
    )
    kw.update(changes)
    return kw


def test_get_training_arguments_uses_its_17_parameters(tmp_path):
    params = list(inspect.signature(get_training_arguments).parameters)
    assert params == [*_training_kwargs(tmp_path), "overrides"]
    args = get_training_arguments(**_training_kwargs(tmp_path))
    assert isinstance(args, TrainingArguments)
    assert Path(args.output_dir) == tmp_path / "out" and Path(args.logging_dir) == tmp_path / "logs"
    assert (args.per_device_train_batch_size, args.learning_rate, args.num_train_epochs) == (
        8,
        5e-4,
        2,
    )
    assert (args.weight_decay, args.warmup_steps, args.lr_scheduler_type) == (0.01, 7, "cosine")
    assert (args.optim, args.do_train, args.do_eval) == ("adamw_torch", True, False)
    assert (args.length_column_name, args.disable_tqdm, args.fp16) == ("length", True, False)
    assert args.train_sampling_strategy == "group_by_length"  # transformers 5's group_by_length
    positional = get_training_arguments(*_training_kwargs(tmp_path, group_by_length=False).values())
    assert positional.train_sampling_strategy == "random"
    over = get_training_arguments(**_training_kwargs(tmp_path), overrides={"learning_rate": 1e-2})
    assert over.learning_rate == 1e-2


def test_get_training_arguments_maps_removed_spellings_and_rejects_unknown_names(tmp_path):
    with pytest.warns(DeprecationWarning, match="eval_strategy"):
        args = get_training_arguments(
            **_training_kwargs(tmp_path),
            overrides={"evaluation_strategy": "no", "warmup_ratio": 0.1, "group_by_length": False},
        )
    assert args.warmup_steps == 0.1 and args.train_sampling_strategy == "random"
    with pytest.raises(TypeError, match="learning_rate"):
        get_training_arguments(**_training_kwargs(tmp_path), overrides={"learning_rat": 1e-2})
    with pytest.raises(TypeError, match="logging_dir"):
        get_training_arguments(**_training_kwargs(tmp_path, logging_dir=None), logging_dirs="x")


def test_fp16_without_a_gpu_falls_back_with_one_warning(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is used")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = get_training_arguments(**_training_kwargs(tmp_path, fp16=True))
    assert args.fp16 is False
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


# --- STFormerPreCollator -----------------------------------------------------------------------
TOKENS = {"<pad>": 0, "<mask>": 1, "ENSG1": 2, "ENSG2": 3, "ENSG3": 4}


def test_precollator_vocabulary_and_conversion():
    pre = STFormerPreCollator(token_dict=TOKENS)
    assert len(pre) == 5
    assert pre.convert_tokens_to_ids("ENSG2") == 3
    assert pre.convert_tokens_to_ids(["ENSG1", "nope"]) == [2, None]
    assert pre.convert_ids_to_tokens(4) == "ENSG3"
    assert pre.convert_ids_to_tokens([2, 99]) == ["ENSG1", None]
    assert pre.get_special_tokens_mask([2, 0, 1, 3]) == [0, 1, 1, 0]
    assert pre.get_special_tokens_mask([2, 0], already_has_special_tokens=True) == [0, 1]


def test_precollator_call_and_pad_return_batch_encodings():
    pre = STFormerPreCollator(TOKENS)
    batch = pre([{"input_ids": [2, 3, 4]}, {"input_ids": [3]}])
    assert isinstance(batch, BatchEncoding) and batch["input_ids"] == [[2, 3, 4], [3]]
    padded = pre.pad([{"input_ids": [2, 3, 4]}, {"input_ids": [3]}])
    assert isinstance(padded, BatchEncoding)
    assert padded["input_ids"] == [[2, 3, 4], [3, 0, 0]]
    assert padded["attention_mask"] == [[1, 1, 1], [1, 0, 0]]
    cut = pre.pad([{"input_ids": [2, 3, 4]}, {"input_ids": [3]}], max_length=2, return_tensors="pt")
    assert torch.equal(cut["input_ids"], torch.tensor([[2, 3], [3, 0]]))  # truncated to max_length
    full = pre.pad(BatchEncoding({"input_ids": [[2], [3, 4]]}), padding="max_length", max_length=4)
    assert full["input_ids"] == [[2, 0, 0, 0], [3, 4, 0, 0]]


def test_precollator_is_the_tokenizer_of_transformers_mlm_collator():
    from transformers import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(
        tokenizer=STFormerPreCollator(TOKENS), mlm=True, mlm_probability=0.5
    )
    torch.manual_seed(0)
    batch = collate([{"input_ids": [2, 3, 4, 2, 3, 4]}, {"input_ids": [3, 4]}])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 6)
    assert (batch["labels"][1, 2:] == -100).all()  # padding is never a target


# --- STFormerPretrainer ------------------------------------------------------------------------
def test_pretrainer_needs_a_model(spot, tmp_path):
    import datasets

    ds = datasets.load_from_disk(spot[0])
    args = get_training_arguments(**_training_kwargs(tmp_path))
    with pytest.raises(ValueError):
        STFormerPretrainer(args, ds, _token_dict(spot[1]), spot[2])


def test_pretrainer_trains_with_its_documented_arguments(spot, tmp_path):
    import datasets

    from stformer_train.training import EpochLengthGroupedSampler

    ds = datasets.load_from_disk(spot[0])
    token_dict = _token_dict(spot[1])
    cfg = build_bert_config("bert", 2, 2, 32, 16, token_dict["<pad>"], len(token_dict))
    args = get_training_arguments(
        **_training_kwargs(tmp_path, train_dataset_length=len(ds)), overrides={"max_steps": 3}
    )
    trainer = STFormerPretrainer(
        args,
        ds,
        token_dict,
        spot[2],
        model=BertForMaskedLM(cfg),
        model_init=None,
        mlm_probability=0.2,
    )
    sampler = trainer.get_train_sampler()
    assert isinstance(sampler, EpochLengthGroupedSampler)  # a transformers LengthGroupedSampler
    assert sorted(sampler) == list(range(len(ds)))
    assert trainer.train().global_step == 3
    assert list((tmp_path / "logs").iterdir())  # TensorBoard events in logging_dir
    random_args = get_training_arguments(**_training_kwargs(tmp_path, group_by_length=False))
    random = STFormerPretrainer(random_args, ds, token_dict, spot[2], model=BertForMaskedLM(cfg))
    assert isinstance(random.get_train_sampler(), torch.utils.data.RandomSampler)
    by_init = STFormerPretrainer(
        args, ds, token_dict, spot[2], model_init=lambda: BertForMaskedLM(cfg)
    )
    assert by_init.model is not None


# --- PretrainML ----------------------------------------------------------------------------------
DOCUMENTED = [
    ("dataset_path", inspect.Parameter.empty),
    ("token_dict_path", inspect.Parameter.empty),
    ("example_lengths_path", inspect.Parameter.empty),
    ("mode", inspect.Parameter.empty),
    ("output_dir", inspect.Parameter.empty),
    ("deepspeed", False),
    ("seed", 42),
    ("model_type", "bert"),
    ("num_layers", 6),
    ("num_heads", 4),
    ("embed_dim", 256),
    ("max_input", 2048),
    ("activ_fn", "relu"),
    ("initializer_range", 0.02),
    ("layer_norm_eps", 1e-12),
    ("attention_dropout", 0.02),
    ("hidden_dropout", 0.02),
    ("batch_size", 12),
    ("learning_rate", 1e-3),
    ("lr_scheduler_type", "linear"),
    ("optimizer_type", "adamw_torch"),
    ("warmup_steps", 10000),
    ("epochs", 3),
    ("weight_decay", 0.001),
    ("do_train", True),
    ("do_eval", False),
    ("length_column_name", "length"),
    ("disable_tqdm", False),
    ("group_by_length", False),
    ("fp16", True),
    ("training_args_overrides", None),
]


def test_pretrainml_signature_is_the_documented_one():
    params = inspect.signature(PretrainML).parameters
    assert [(n, p.default) for n, p in params.items()] == DOCUMENTED
    assert PretrainML("d", "t.pkl", "l.pkl", "neighborhood", "o").max_input == 4096
    assert PretrainML("d", "t.pkl", "l.pkl", "spot", "o", deepspeed=False).max_input == 2048
    with pytest.raises(TypeError, match="token_dict_path"):
        PretrainML(
            "d", token_dictionary_path="t", example_lengths_path="l", mode="spot", output_dir="o"
        )
    with pytest.raises(TypeError, match="max_steps"):
        PretrainML("d", "t", "l", "spot", "o", training_args_overrides={"max_step": 3})


def _saved_config(out: Path) -> BertConfig:
    (model_dir,) = out.glob("models/*/models")
    assert (model_dir / "model.safetensors").is_file()
    assert _token_dict(str(model_dir / "token_dictionary.pkl"))  # the tokenizer's vocabulary
    tok = AutoTokenizer.from_pretrained(model_dir)  # and a fast tokenizer with the model's ids
    assert tok.get_vocab() == _token_dict(str(model_dir / "token_dictionary.pkl"))
    assert (model_dir / "README.md").is_file()  # a model card
    return BertConfig.from_pretrained(model_dir)


@pytest.mark.slow
def test_run_pretraining_spot_builds_the_model_its_arguments_describe(spot, tmp_path):
    ml = PretrainML(
        dataset_path=spot[0],
        token_dict_path=spot[1],
        example_lengths_path=spot[2],
        mode="spot",
        output_dir=str(tmp_path),
        num_layers=2,
        num_heads=4,
        embed_dim=32,
        max_input=16,
        activ_fn="gelu",
        initializer_range=0.05,
        layer_norm_eps=1e-6,
        attention_dropout=0.1,
        hidden_dropout=0.15,
        batch_size=16,
        warmup_steps=0,
        group_by_length=True,
        do_eval=True,
        disable_tqdm=True,
        training_args_overrides={"max_steps": 3},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ml.run_pretraining() is None
    if not torch.cuda.is_available():  # fp16=True, the default: fp32 here, said once
        assert sum("fp16" in str(w.message) for w in caught if w.category is RuntimeWarning) == 1
    cfg = _saved_config(tmp_path)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (2, 4, 32)
    assert (cfg.max_position_embeddings, cfg.hidden_act) == (16, "gelu")
    assert (cfg.initializer_range, cfg.layer_norm_eps) == (0.05, 1e-6)
    assert (cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob) == (0.1, 0.15)
    assert cfg.vocab_size == len(_token_dict(spot[1]))
    assert any("eval_loss" in h for h in ml.trainer.state.log_history)  # do_eval


@pytest.mark.slow
def test_run_pretraining_neighborhood_doubles_max_input(neighborhood, tmp_path):
    ml = PretrainML(
        *neighborhood,
        "neighborhood",
        str(tmp_path),
        **TINY,
        training_args_overrides={"max_steps": 2},
    )
    ml.run_pretraining()
    assert _saved_config(tmp_path).max_position_embeddings == 32
    assert ml.trainer.state.global_step == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_run_hyperparameter_train_prints_the_best_trial(spot, tmp_path, backend, capsys):
    PretrainML(
        *spot,
        "spot",
        str(tmp_path),
        **TINY,
        training_args_overrides={"max_steps": 2, "eval_steps": 1, "logging_steps": 1},
    )
    search_space = {
        "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "batch_size": {"type": "categorical", "values": [8, 16]},
    }
    # the module-level function runs on the PretrainML just configured
    assert run_hyperparameter_train(search_space, {"cpu": 1}, n_trials=2, backend=backend) is None
    printed = capsys.readouterr().out
    assert f"Best trial ({backend}, 2 trials)" in printed and "learning_rate" in printed
    assert "batch_size" in printed
    assert list(tmp_path.glob("hyperparameter_search/*/best.yaml"))
