"""stFormer's pretraining API (``setup_environment`` ... ``PretrainML``) on transformers 5.x.

The names and defaults are stFormer's. What changed, and why:

* transformers 5 removed ``TrainingArguments.group_by_length``; :func:`get_training_arguments`
  maps it to ``train_sampling_strategy="group_by_length"``.
* The reference's length-grouped sampler override was never called; here
  :meth:`STFormerPretrainer._get_train_sampler` has the 5.x signature ``(self, train_dataset=None)``
  and really samples from the example-lengths file.
* The MLM loss is computed only at the masked positions (see :func:`stformer_train.models.mlm_loss`).

:class:`STFormerPretrainer` and :func:`load_example_lengths` live in :mod:`stformer_train.hf._trainer`
(the loop shared with :func:`stformer_train.hf.pretrain_mlm`); ``PretrainML`` builds its model and
collator with :func:`stformer_train.assemble.assemble` from the ``ModelConfig`` and ``TrainConfig``
its documented arguments describe.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NamedTuple

from transformers import TrainingArguments

from stformer_train.assemble import assemble
from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.hf._trainer import STFormerPretrainer, last_checkpoint
from stformer_train.precision import resolve_precision

STFORMER_TRAIN_DEFAULTS = TrainConfig(
    learning_rate=1e-3,
    lr_scheduler_type="linear",
    warmup_steps=10_000,
    weight_decay=0.001,
    per_device_train_batch_size=12,
    num_train_epochs=3,
    logging_steps=100,
    mlm_probability=0.15,
    seed=42,
)
"""stFormer's documented training defaults, used by :func:`get_training_arguments` and
:class:`PretrainML` (the seed API keeps them; stformer's own defaults are
:data:`stformer_train.config.TRAIN_DEFAULTS`)."""
_D = STFORMER_TRAIN_DEFAULTS


def setup_environment(seed: int = 42) -> None:
    """Seed Python, numpy and torch (all devices) and make tokenizers/threads behave in workers."""
    from transformers import set_seed

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONHASHSEED"] = str(seed)
    set_seed(seed)  # Python, numpy and torch (all devices)


class OutputDirs(NamedTuple):
    training_output_dir: Path
    logging_dir: Path
    model_output_dir: Path


def make_output_dirs(output_dir: str | PathLike[str], run_name: str) -> OutputDirs:
    """Create stFormer's run folders: ``OUTPUT/models/RUN`` (checkpoints), ``OUTPUT/runs/RUN`` (logs)
    and ``OUTPUT/models/RUN/models`` (the final model).

    A previous run's final model is refused (``FileExistsError``) so a run is never overwritten.
    """
    if not run_name or os.sep in run_name:
        raise ValueError(f"run_name must be a non-empty folder name, got {run_name!r}")
    root = Path(output_dir)
    dirs = OutputDirs(
        root / "models" / run_name, root / "runs" / run_name, root / "models" / run_name / "models"
    )
    if (dirs.model_output_dir / "config.json").exists():
        raise FileExistsError(
            f"{dirs.model_output_dir} already holds a trained model; choose another run_name"
        )
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def get_training_arguments(
    output_dir: str | PathLike[str],
    *,
    learning_rate: float = _D.learning_rate,
    lr_scheduler_type: str = _D.lr_scheduler_type,
    warmup_steps: float = _D.warmup_steps,
    weight_decay: float = _D.weight_decay,
    per_device_train_batch_size: int = _D.per_device_train_batch_size,
    num_train_epochs: float = _D.num_train_epochs,
    group_by_length: bool = True,
    save_steps: int | None = None,
    logging_steps: int = _D.logging_steps,
    seed: int = _D.seed,
    overrides: dict[str, Any] | None = None,
) -> TrainingArguments:
    """stFormer's ``TrainingArguments`` on transformers 5.x.

    Defaults (stFormer/Geneformer): lr 1e-3, linear schedule, 10,000 warmup steps, weight decay
    0.001, batch 12, 3 epochs, length-grouped sampling; bf16 autocast on a GPU that has it, fp16
    on other GPUs, fp32 on CPU. ``group_by_length`` becomes
    ``train_sampling_strategy="group_by_length"``; ``overrides`` (any ``TrainingArguments`` field,
    plus ``group_by_length``) win.
    """
    overrides = dict(overrides or {})
    group_by_length = bool(overrides.pop("group_by_length", group_by_length))
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        per_device_train_batch_size=per_device_train_batch_size,
        num_train_epochs=num_train_epochs,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        length_column_name="length",
        save_strategy="steps",
        save_steps=save_steps or 500,
        logging_steps=logging_steps,
        seed=seed,
        data_seed=seed,
        **resolve_precision("auto").hf_flags,
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class PretrainML:
    """stFormer's pretraining entry point with its documented defaults.

    Parameters
    ----------
    dataset_path
        A tokenized corpus (``datasets.load_from_disk`` folder, or a stformer corpus folder).
    example_lengths_file, token_dictionary_file
        The lengths of the examples (pickle/JSON) and the token dictionary (JSON/pickle).
    output_dir, run_name
        Where :func:`make_output_dirs` creates the run folders.
    mode
        ``"spot"`` or ``"neighborhood"``; neighborhood examples hold a spot and its neighbourhood,
        so ``max_input`` is doubled.
    max_input
        Longest input (2,048); the model's ``max_position_embeddings``.
    num_layers, num_embed_dim, num_attn_heads, intermed_size, activation, initializer_range,
    layer_norm_eps, attention_probs_dropout_prob, hidden_dropout_prob
        The BERT (6 layers, 256 hidden, 4 heads, 512 intermediate, relu, 0.02, 1e-12, 0.02, 0.02).
    batch_size, learning_rate, lr_schedule, warmup_steps, epochs, weight_decay, seed
        The optimisation (12, 1e-3, linear, 10,000, 3, 0.001, 42).
    mlm_probability
        Fraction of gene tokens to predict (0.15).
    training_overrides
        Extra ``TrainingArguments`` fields (see :func:`get_training_arguments`).
    deepspeed
        A ready DeepSpeed config (dict or JSON file) for ``TrainingArguments(deepspeed=...)``.
        ``stformer_dist.PretrainML`` also takes ``True`` or a preset (``"zero2"``) and builds it
        with ``stformer_dist.build_deepspeed``; this package never imports DeepSpeed.

    >>> PretrainML(dataset_path="d", example_lengths_file="l.pkl", token_dictionary_file="t.json",
    ...            output_dir="o", mode="neighborhood").max_input
    4096
    """

    def __init__(
        self,
        *,
        dataset_path: str | PathLike[str],
        example_lengths_file: str | PathLike[str],
        token_dictionary_file: str | PathLike[str],
        output_dir: str | PathLike[str],
        run_name: str = "stformer",
        mode: Literal["spot", "neighborhood"] = "spot",
        max_input: int = 2048,
        num_layers: int = 6,
        num_embed_dim: int = 256,
        num_attn_heads: int = 4,
        intermed_size: int = 512,
        activation: str = "relu",
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        attention_probs_dropout_prob: float = 0.02,
        hidden_dropout_prob: float = 0.02,
        batch_size: int = _D.per_device_train_batch_size,
        learning_rate: float = _D.learning_rate,
        lr_schedule: str = _D.lr_scheduler_type,
        warmup_steps: float = _D.warmup_steps,
        epochs: float = _D.num_train_epochs,
        weight_decay: float = _D.weight_decay,
        seed: int = _D.seed,
        mlm_probability: float = _D.mlm_probability,
        training_overrides: dict[str, Any] | None = None,
        deepspeed: dict[str, Any] | str | PathLike[str] | None = None,
    ):
        if isinstance(deepspeed, bool) or not isinstance(deepspeed, dict | str | PathLike | None):
            raise ValueError(
                "PretrainML.deepspeed must be a DeepSpeed config dict or JSON file; for deepspeed=True "
                "or a preset ('zero2') use stformer_dist.PretrainML (pip install stformer-dist)"
            )
        if mode not in ("spot", "neighborhood"):
            raise ValueError(f"PretrainML.mode must be 'spot' or 'neighborhood', got {mode!r}")
        if max_input <= 0:
            raise ValueError(f"PretrainML.max_input must be > 0, got {max_input}")
        self.dataset_path, self.example_lengths_file = (
            Path(dataset_path),
            Path(example_lengths_file),
        )
        self.token_dictionary_file, self.output_dir = Path(token_dictionary_file), Path(output_dir)
        self.run_name, self.mode = run_name, mode
        self.max_input = max_input * 2 if mode == "neighborhood" else max_input
        self.model_config = ModelConfig(
            num_layers=num_layers,
            hidden_size=num_embed_dim,
            num_heads=num_attn_heads,
            intermediate_size=intermed_size,
            max_position_embeddings=self.max_input,
            hidden_act=activation,
            initializer_range=initializer_range,
            layer_norm_eps=layer_norm_eps,
            hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
        )
        self.training = dict(
            learning_rate=learning_rate,
            lr_scheduler_type=lr_schedule,
            warmup_steps=warmup_steps,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            weight_decay=weight_decay,
            seed=seed,
        )
        self.seed, self.mlm_probability = seed, mlm_probability
        # the same run as stformer's own configs, so the one assembly builds its parts
        self.train_config = TrainConfig(**self.training, mlm_probability=mlm_probability)
        self.training_overrides = dict(training_overrides or {})
        if deepspeed is not None:
            self.training_overrides["deepspeed"] = (
                deepspeed if isinstance(deepspeed, dict) else str(deepspeed)
            )

    def run_pretraining(self) -> STFormerPretrainer:
        """Build the model, collator and trainer; train (resuming from the last checkpoint); save the model."""
        import datasets

        from stformer_data import GeneVocab

        setup_environment(self.seed)
        dirs = make_output_dirs(self.output_dir, self.run_name)
        folder = (
            self.dataset_path / "dataset"
            if (self.dataset_path / "dataset").is_dir()
            else self.dataset_path
        )
        dataset = datasets.load_from_disk(str(folder))
        vocab = GeneVocab.load(self.token_dictionary_file, allow_pickle=True)
        parts = assemble(vocab, self.model_config, self.train_config)
        args = get_training_arguments(
            dirs.training_output_dir, **self.training, overrides=self.training_overrides
        )
        trainer = STFormerPretrainer(
            model=parts.model,
            args=args,
            data_collator=parts.collator,
            train_dataset=dataset.select_columns(["input_ids"]),
            example_lengths_file=self.example_lengths_file,
        )
        last = last_checkpoint(dirs.training_output_dir)
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        trainer.save_model(str(dirs.model_output_dir))
        if trainer.is_world_process_zero():
            vocab.save_json(dirs.model_output_dir / "token_dictionary.json")
        return trainer
