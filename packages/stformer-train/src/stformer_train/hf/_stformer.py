"""stFormer's ``PretrainML``: its 31 documented parameters in, a pretrained model out.

``PretrainML`` is an adapter over stformer's machinery: its model arguments become a
:class:`~stformer_train.ModelConfig` (the one :func:`~stformer_train.models.build_bert_config`
uses), its run a :class:`~stformer_train.TrainConfig`; :func:`stformer_train.assemble.assemble`
builds model and collator from them, :func:`~stformer_train.hf.get_training_arguments` (or
:func:`~stformer_train.hf.build_deepspeed`) the arguments, and :class:`STFormerPretrainer` trains.
``run_hyperparameter_train`` hands the same configs to ``stformer_tune.run_search`` (imported when
it runs, like transformers' ``Trainer.hyperparameter_search`` imports Optuna and Ray).
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from stformer_data import Corpus
from stformer_data.atomic import atomic_write_bytes, atomic_write_text
from stformer_train._names import checked_signature, unknown_name_error
from stformer_train.assemble import assemble
from stformer_train.config import TrainConfig
from stformer_train.hf._arguments import (
    build_training_arguments,
    check_overrides,
    make_output_dirs,
    setup_environment,
)
from stformer_train.hf._precollator import STFormerPreCollator
from stformer_train.hf._trainer import STFormerPretrainer, last_checkpoint, load_example_lengths
from stformer_train.models._bert import stformer_model_config
from stformer_train.precision import Precision

log = logging.getLogger(__name__)

__all__ = ["PretrainML", "load_token_dictionary", "run_hyperparameter_train", "run_pretraining"]

MODES = ("spot", "neighborhood")
#: PretrainML's names of the hyperparameters a search may vary -> stformer's config fields
#: (TrainConfig / ModelConfig fields, which include TrainingArguments' names, pass as they are).
SEARCH_NAMES = {
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "embed_dim": "hidden_size",
    "activ_fn": "hidden_act",
    "attention_dropout": "attention_probs_dropout_prob",
    "hidden_dropout": "hidden_dropout_prob",
}
# TrainingArguments fields a search sets itself for every trial
_SEARCH_OWNS = ("output_dir", "logging_dir", "disable_tqdm", "report_to", "deepspeed")

_LAST: list[PretrainML] = []  # the most recently configured PretrainML (module-level functions)


def load_token_dictionary(
    path: str | PathLike[str], *, allow_pickle: bool | Literal["plain"] = "plain"
) -> dict[str, int]:
    """A token dictionary from a pickle (stFormer / Geneformer) or JSON file (a plain dict, or
    stformer's ``token_dictionary.json``).

    A pickle runs code stored in it when loaded: for ``token_dictionary.pkl`` inside a stformer
    corpus, the corpus's ``token_dictionary.json`` is read instead and nothing is unpickled; any
    other pickle of plain data is loaded as stFormer's documented API does (the caller named it)
    with an unpickler that resolves no code (``allow_pickle="plain"``, the default);
    ``allow_pickle=True`` unpickles fully and ``allow_pickle=False`` refuses every pickle.
    """
    from stformer_data import InputError
    from stformer_data.corpus.format import TOKEN_DICTIONARY, is_stformer_corpus

    path = Path(path)
    if not path.is_file():
        raise InputError(
            path, "token_dict_path", "does not exist", "pass the token dictionary file"
        )
    if path.suffix.lower() != ".json" and is_stformer_corpus(path.parent):
        if (path.parent / TOKEN_DICTIONARY).is_file():
            path = path.parent / TOKEN_DICTIONARY  # the same dictionary, read without unpickling
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, Mapping) and "token_to_id" in data:  # stformer's vocabulary JSON
            data = data["token_to_id"]
    elif not allow_pickle:
        raise InputError(
            path,
            "token_dict_path",
            "is a pickle, and loading a pickle runs code from the file",
            "convert it to JSON, or pass allow_pickle=True (--allow-pickle) if you trust it",
        )
    elif allow_pickle == "plain":
        from stformer_data.genes.plain_pickle import load_plain_pickle

        data = load_plain_pickle(
            path, "token_dict_path"
        )  # plain data only: nothing from the file runs
    else:
        with path.open("rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - named by the caller, allow_pickle=True
    if not isinstance(data, Mapping) or not data:
        raise InputError(
            path, "token_dict_path", "is not a token -> id dictionary", "pass a dict of str -> int"
        )
    return {str(k): int(v) for k, v in data.items()}


@dataclass(frozen=True)
class DatasetCorpus(Corpus):
    """A Hugging Face dataset with a token dictionary and example lengths, as a stformer corpus
    (what ``stformer_tune.run_search`` and ``pretrain_mlm`` take)."""

    example_lengths: tuple[int, ...] = ()

    @property
    def lengths(self) -> list[int]:
        return list(self.example_lengths)


class PretrainML:
    """stFormer's pretraining set-up for a BERT masked-language model.

    Parameters
    ----------
    dataset_path
        A Hugging Face dataset (``save_to_disk`` folder) with ``input_ids``; a stformer corpus
        folder works too.
    token_dict_path
        The token dictionary (pickle or JSON) with ``<pad>`` and ``<mask>``.
    example_lengths_path
        The pickled lengths of the examples (length-grouped sampling; checked against the dataset).
    mode
        ``"spot"`` or ``"neighborhood"`` (a spot and its neighbours per example: ``max_input`` is
        doubled).
    output_dir
        Root of the run folders (:func:`make_output_dirs`): ``models/RUN`` (checkpoints),
        ``runs/RUN`` (logs), ``models/RUN/models`` (the model, with ``token_dictionary.pkl``).
    deepspeed
        ``True``: train on DeepSpeed with :func:`build_deepspeed` (ZeRO-2); stformer also takes a
        preset (``"zero3"``), a JSON file or a dict here. Launch several processes with
        ``torchrun``/``deepspeed``.
    seed
        Seeds Python, numpy, torch, the model's initialisation, the sampler and the masks.
    model_type, num_layers, num_heads, embed_dim, max_input, activ_fn, initializer_range,
    layer_norm_eps, attention_dropout, hidden_dropout
        The model, as in :func:`build_bert_config` (intermediate size ``2 * embed_dim``).
    batch_size, learning_rate, lr_scheduler_type, optimizer_type, warmup_steps, epochs,
    weight_decay, do_train, do_eval, length_column_name, disable_tqdm, group_by_length, fp16
        The run, as in :func:`get_training_arguments`. ``do_eval`` holds out 10% of the examples
        (seeded) and evaluates at every checkpoint and at the end; ``do_train=False`` saves the
        initialised (and evaluated) model. ``fp16`` on a machine without a CUDA GPU trains in
        fp32, with one ``RuntimeWarning``.
    training_args_overrides
        ``TrainingArguments`` fields that win (``{"max_steps": 200}``); an unknown one is a
        ``TypeError`` naming the closest.

    Attributes
    ----------
    run_name
        The run's folder name, derived from the arguments (``stformer_spot_L6_H4_E256_...``); set it
        before :meth:`run_pretraining` to choose another.
    trainer
        The :class:`STFormerPretrainer` of the last :meth:`run_pretraining`.

    >>> PretrainML("d", "t.pkl", "l.pkl", "neighborhood", "o").max_input
    4096
    """

    @checked_signature
    def __init__(
        self,
        dataset_path: str,
        token_dict_path: str,
        example_lengths_path: str,
        mode: Literal["spot", "neighborhood"],
        output_dir: str,
        deepspeed: bool = False,
        seed: int = 42,
        model_type: str = "bert",
        num_layers: int = 6,
        num_heads: int = 4,
        embed_dim: int = 256,
        max_input: int = 2048,
        activ_fn: str = "relu",
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        attention_dropout: float = 0.02,
        hidden_dropout: float = 0.02,
        batch_size: int = 12,
        learning_rate: float = 1e-3,
        lr_scheduler_type: str = "linear",
        optimizer_type: str = "adamw_torch",
        warmup_steps: int = 10000,
        epochs: int = 3,
        weight_decay: float = 0.001,
        do_train: bool = True,
        do_eval: bool = False,
        length_column_name: str = "length",
        disable_tqdm: bool = False,
        group_by_length: bool = False,
        fp16: bool = True,
        training_args_overrides: dict | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"PretrainML: mode must be 'spot' or 'neighborhood', got {mode!r}")
        if deepspeed is None or not isinstance(deepspeed, bool | str | PathLike | Mapping):
            raise TypeError(
                "PretrainML: deepspeed must be True/False (or a DeepSpeed preset, JSON file or dict), "
                f"got {deepspeed!r}"
            )
        if str(model_type).strip().lower() != "bert":
            raise ValueError(f"PretrainML: model_type must be 'bert', got {model_type!r}")
        if isinstance(max_input, bool) or not isinstance(max_input, int) or max_input < 1:
            raise ValueError(f"PretrainML: max_input must be an int >= 1, got {max_input!r}")
        self.dataset_path = Path(dataset_path)
        self.token_dict_path = Path(token_dict_path)
        self.example_lengths_path = Path(example_lengths_path)
        self.mode, self.output_dir, self.deepspeed, self.seed = (
            mode,
            Path(output_dir),
            deepspeed,
            seed,
        )
        self.model_type = model_type
        self.max_input = 2 * max_input if mode == "neighborhood" else max_input
        self.model_config = stformer_model_config(
            num_layers=num_layers,
            num_heads=num_heads,
            embed_dim=embed_dim,
            max_input=self.max_input,
            activ_fn=activ_fn,
            initializer_range=initializer_range,
            layer_norm_eps=layer_norm_eps,
            attention_dropout=attention_dropout,
            hidden_dropout=hidden_dropout,
        )
        self.training = dict(  # the documented run parameters, as get_training_arguments takes them
            batch_size=batch_size,
            learning_rate=learning_rate,
            epochs=epochs,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            lr_scheduler_type=lr_scheduler_type,
            optimizer_type=optimizer_type,
            do_train=do_train,
            do_eval=do_eval,
            length_column_name=length_column_name,
            disable_tqdm=disable_tqdm,
            fp16=fp16,
            group_by_length=group_by_length,
        )
        self.training_args_overrides = check_overrides(
            "PretrainML: training_args_overrides", training_args_overrides
        )
        # the same run as stformer's own config (validated here, so bad values fail early)
        self._train_config = TrainConfig(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            lr_scheduler_type=lr_scheduler_type,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            group_by_length=group_by_length,
            seed=seed,
        )
        self.run_name = (
            f"stformer_{mode}_L{num_layers}_H{num_heads}_E{embed_dim}_SL{self.max_input}"
            f"_B{batch_size}_LR{learning_rate:g}_LS{lr_scheduler_type}_WU{warmup_steps}"
            f"_EP{epochs:g}_S{seed}"
        )
        self.trainer: STFormerPretrainer | None = None
        self.search_result: Any = None
        _LAST[:] = [self]

    # --- the parts ---------------------------------------------------------------------------
    @cached_property
    def precision(self) -> Precision:
        """The run's precision, resolved once (``fp16`` without a GPU: fp32 and one warning)."""
        from stformer_train.hf._arguments import fp16_precision

        return fp16_precision(self.training["fp16"])

    @property
    def train_config(self) -> TrainConfig:
        """The run as stformer's :class:`TrainConfig` (what the assembly and searches take)."""
        from stformer_train.config import merge_config

        return merge_config(self._train_config, mixed_precision=self.precision.value)

    def load_data(self) -> tuple[Any, list[int], dict[str, int]]:
        """(the dataset's ``input_ids``, the example lengths, the token dictionary), checked."""
        import datasets

        from stformer_data import InputError

        folder = self.dataset_path
        if (folder / "dataset").is_dir() and (folder / "manifest.json").is_file():
            folder = folder / "dataset"  # a stformer corpus folder
        if not folder.is_dir():
            raise InputError(
                folder, "dataset_path", "does not exist", "pass a datasets.save_to_disk folder"
            )
        dataset = datasets.load_from_disk(str(folder))
        if isinstance(dataset, datasets.DatasetDict):
            raise InputError(
                folder,
                "dataset_path",
                f"is a DatasetDict ({list(dataset)})",
                "pass the folder of one split",
            )
        if "input_ids" not in dataset.column_names:
            raise InputError(
                folder, "input_ids", "is not a column", "tokenize the cells into input_ids"
            )
        lengths = load_example_lengths(self.example_lengths_path)
        if len(lengths) != len(dataset):
            raise InputError(
                self.example_lengths_path,
                "example lengths",
                f"list {len(lengths)} examples but the dataset has {len(dataset)}",
                "pass the lengths file written with this dataset",
            )
        column = self.training["length_column_name"]
        if column in dataset.column_names and list(dataset[column]) != lengths:
            raise InputError(
                self.example_lengths_path,
                "example lengths",
                f"differ from the dataset's {column!r} column",
                "pass the lengths file written with this dataset",
            )
        if max(lengths, default=0) > self.max_input:
            raise ValueError(
                f"PretrainML: the longest example has {max(lengths)} tokens, more than the "
                f"model's {self.max_input} positions (max_input, doubled in neighborhood mode)"
            )
        return (
            dataset.select_columns(["input_ids"]),
            lengths,
            load_token_dictionary(self.token_dict_path),
        )

    def training_arguments(self, output_dir: Path, logging_dir: Path, n_train: int):
        """The run's ``TrainingArguments`` (on DeepSpeed when ``deepspeed``)."""
        overrides = {"seed": self.seed, "data_seed": self.seed, **self.training_args_overrides}
        if self.deepspeed is not True and self.deepspeed is not False:
            overrides.setdefault("deepspeed", self.deepspeed)
        params = dict(
            self.training,
            output_dir=output_dir,
            logging_dir=logging_dir,
            train_dataset_length=n_train,
        )
        return build_training_arguments(
            "PretrainML",
            params,
            deepspeed=self.deepspeed is not False,
            precision=self.precision,
            overrides=overrides,
        )

    # --- the runs ----------------------------------------------------------------------------
    @checked_signature
    def run_pretraining(self) -> None:
        """Pretrain: set up, build the model, train (resuming an interrupted run), save.

        The model goes to ``output_dir/models/RUN/models`` with ``token_dictionary.pkl`` /
        ``.json``; the log history to ``output_dir/runs/RUN/log_history.json``. The trainer stays
        in :attr:`trainer`.
        """
        import numpy as np

        setup_environment(self.seed)
        dirs = make_output_dirs(self.output_dir, self.run_name)
        dataset, lengths, token_dict = self.load_data()
        precollator = STFormerPreCollator(token_dict)
        parts = assemble(precollator, self.model_config, self.train_config)
        train_set, eval_set, train_lengths = dataset, None, lengths
        if self.training["do_eval"]:
            order = np.random.default_rng(self.seed).permutation(len(dataset))
            n_eval = max(1, len(dataset) // 10)
            if n_eval >= len(dataset):
                raise ValueError("PretrainML: do_eval needs at least 2 examples")
            train_idx, eval_idx = np.sort(order[n_eval:]), np.sort(order[:n_eval])
            train_set, eval_set = dataset.select(train_idx), dataset.select(eval_idx)
            train_lengths = [lengths[i] for i in train_idx]
        args = self.training_arguments(dirs["training"], dirs["logging"], len(train_set))
        trainer = STFormerPretrainer(
            args,
            train_set,
            token_dict,
            None,  # lengths loaded and checked above
            model=parts.model,
            data_collator=parts.collator,
            example_lengths=train_lengths,
            eval_dataset=eval_set,
        )
        self.trainer = trainer
        if self.training["do_train"]:
            last = last_checkpoint(dirs["training"])
            trainer.train(resume_from_checkpoint=str(last) if last else None)
        if eval_set is not None:
            trainer.evaluate()
        trainer.save_model(str(dirs["model"]))  # every rank: DeepSpeed gathers ZeRO-3 weights
        if trainer.is_world_process_zero():
            atomic_write_bytes(dirs["model"] / "token_dictionary.pkl", pickle.dumps(token_dict))
            atomic_write_text(dirs["model"] / "token_dictionary.json", json.dumps(token_dict))
            self._save_hub_files(dirs["model"], token_dict, dataset, trainer.state.log_history)
            atomic_write_text(
                dirs["logging"] / "log_history.json",
                json.dumps(trainer.state.log_history, indent=1, default=str),
            )
        trainer.accelerator.wait_for_everyone()
        log.info("model saved to %s", dirs["model"])

    def _save_hub_files(self, model_dir: Path, token_dict, dataset, history) -> None:
        """The fast tokenizer and model card of the saved model (:mod:`stformer_train.hub`)."""
        from stformer_train._hub import save_hub_files, tokenizer_settings

        manifest_path = self.dataset_path / "manifest.json"  # a stformer corpus folder has one
        manifest = (
            json.loads(manifest_path.read_text())
            if manifest_path.is_file()
            else {"max_length": self.model_config.max_position_embeddings}
        )
        save_hub_files(
            model_dir,
            token_dict,
            tokenizer_settings(manifest, dataset[:1]["input_ids"], token_dict),
            corpus={"path": str(self.dataset_path), "n_cells": len(dataset)},
            run_config={
                "engine": "PretrainML",
                "model": self.model_config.to_dict(),
                "train": self.train_config.to_dict(),
            },
            log_history=history,
        )

    def search_corpus(self) -> DatasetCorpus:
        """The dataset, token dictionary and lengths as the corpus a search trains its trials on."""
        from stformer_data import GeneVocab

        dataset, lengths, token_dict = self.load_data()
        dataset = dataset.add_column("length", lengths)
        return DatasetCorpus(
            path=self.dataset_path,
            dataset=dataset,
            vocab=GeneVocab(token_dict),
            manifest={},
            example_lengths=tuple(lengths),
        )

    @checked_signature
    def run_hyperparameter_train(
        self,
        search_space: dict,
        resources_per_trial: Any,
        n_trials: int = 8,
        backend: Literal["ray", "optuma"] = "ray",
        *,
        eval_fraction: float = 0.1,
        resume: bool = False,
        address: str | None = None,
        num_cpus: int = 2,
    ) -> None:
        """Search hyperparameters of this set-up; print the best trial.

        Parameters
        ----------
        search_space
            ``{name: {"type": "loguniform" | "uniform" | "int" | "categorical", "low": ..,
            "high": .., "values": [...]}}``. Names are this class's (``learning_rate``,
            ``batch_size``, ``weight_decay``, ``warmup_steps``, ``embed_dim``, ``num_layers``,
            ``num_heads``, ``attention_dropout``, ...) or stformer's config fields.
        resources_per_trial
            ``{"cpu": 1, "gpu": 0}`` per trial (Ray; with Optuna the CPUs set torch's threads).
        n_trials
            Trials in the search.
        backend
            ``"ray"`` (Ray Tune, ASHA) or ``"optuna"``; stFormer's spelling ``"optuma"`` means
            Optuna (with a ``DeprecationWarning``).
        eval_fraction, resume, address, num_cpus
            stformer's extensions: the held-out fraction whose loss is the objective, resuming
            an interrupted search, a Ray cluster address, CPUs of a local Ray.

        Every trial pretrains this set-up (dataset, token dictionary, model, run arguments,
        ``training_args_overrides`` such as ``max_steps``) with the drawn values, without
        DeepSpeed, and is scored by its final evaluation loss. The results (``trials.csv``,
        ``best.yaml``, ``summary.json``) go to ``output_dir/hyperparameter_search/RUN``; the
        result object stays in :attr:`search_result`. Needs ``stformer-tune`` (imported here).
        """
        tune = _import_tune()
        backend = tune.resolve_backend(backend)
        if self.deepspeed is not False:
            warnings.warn(
                "run_hyperparameter_train runs its trials without DeepSpeed",
                UserWarning,
                stacklevel=2,
            )
        space = {SEARCH_NAMES.get(k, k): v for k, v in dict(search_space).items()}
        train_fields = set(TrainConfig.__dataclass_fields__)
        train_over, arg_over = {}, {}
        for key, value in self.training_args_overrides.items():
            if key in _SEARCH_OWNS:
                raise ValueError(
                    f"PretrainML.run_hyperparameter_train: training_args_overrides[{key!r}] is set "
                    "by the search for each trial; remove it"
                )
            (train_over if key in train_fields else arg_over)[key] = value
        if self.training["optimizer_type"] != "adamw_torch":
            arg_over.setdefault("optim", self.training["optimizer_type"])
        from stformer_train.config import merge_config

        train = merge_config(
            self.train_config,
            train_over,
            eval_fraction=eval_fraction,
            eval_steps=train_over.get("eval_steps") or train_over.get("save_steps"),
        )
        out = self.output_dir / "hyperparameter_search" / self.run_name
        result = tune.run_search(
            self.search_corpus(),
            out,
            space,
            model=self.model_config,
            train=train,
            backend=backend,
            n_trials=n_trials,
            resources_per_trial=resources_per_trial,
            resume=resume,
            seed=self.seed,
            address=address,
            num_cpus=num_cpus,
            arguments=arg_over,
        )
        self.search_result = result
        names = {v: k for k, v in SEARCH_NAMES.items()}
        original = set(dict(search_space))
        params = {
            (names[k] if names.get(k) in original else k): v for k, v in result.best.params.items()
        }
        print(
            f"Best trial ({result.backend}, {len(result.trials)} trials): trial {result.best.number}, "
            f"eval_loss={result.best.eval_loss:.6g}, params={params}\n"
            f"Best config: {result.best_config}"
        )


def _last(pretrain_ml: PretrainML | None, what: str) -> PretrainML:
    if pretrain_ml is not None:
        return pretrain_ml
    if not _LAST:
        raise RuntimeError(f"{what}() needs a PretrainML(...) first (or pass pretrain_ml=)")
    return _LAST[0]


def run_pretraining(*, pretrain_ml: PretrainML | None = None) -> None:
    """:meth:`PretrainML.run_pretraining` of ``pretrain_ml`` (default: the last ``PretrainML`` made)."""
    _last(pretrain_ml, "run_pretraining").run_pretraining()


def run_hyperparameter_train(
    search_space: dict,
    resources_per_trial: Any,
    n_trials: int = 8,
    backend: Literal["ray", "optuma"] = "ray",
    *,
    pretrain_ml: PretrainML | None = None,
    **kwargs: Any,
) -> None:
    """:meth:`PretrainML.run_hyperparameter_train` as a module function.

    The set-up (dataset, token dictionary, output folder, model and run arguments) is
    ``pretrain_ml``'s, by default the last ``PretrainML`` constructed in this process.
    """
    allowed = ("eval_fraction", "resume", "address", "num_cpus")
    for key in kwargs:
        if key not in allowed:
            raise unknown_name_error(
                "run_hyperparameter_train()",
                "keyword argument",
                key,
                (
                    "search_space",
                    "resources_per_trial",
                    "n_trials",
                    "backend",
                    "pretrain_ml",
                    *allowed,
                ),
            )
    _last(pretrain_ml, "run_hyperparameter_train").run_hyperparameter_train(
        search_space, resources_per_trial, n_trials, backend, **kwargs
    )


def _import_tune():
    try:
        import stformer_tune
    except ImportError as exc:  # pragma: no cover - the workspace installs it
        raise ImportError(
            'run_hyperparameter_train needs stformer-tune: pip install "stformer-tune"'
        ) from exc
    return stformer_tune
