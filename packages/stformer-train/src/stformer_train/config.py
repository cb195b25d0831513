"""Configs of the model and of a training run: frozen, keyword-only, validated at construction."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from stformer_train.precision import PRECISION_MODES

_C = TypeVar("_C")


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value}")


def _check_unit(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{type(obj).__name__}.{name} must be in [0, 1), got {value}")


class _ConfigMixin:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; allowed: {sorted(known)}"
            )
        kinds = _field_kinds(cls)
        values = {}
        for key, value in data.items():
            try:
                values[key] = _check_value(value, kinds[key])
            except TypeError:
                raise ValueError(
                    f"{cls.__name__}.{key} must be {_type_name(kinds[key])}, got {value!r}"
                ) from None
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_ConfigMixin):
    """Shape of a BERT encoder (stFormer's documented defaults: relu, init 0.02, eps 1e-12, dropouts 0.02).

    ``init_from`` starts from the weights of a saved BERT folder (a stformer model or a Geneformer
    checkpoint: continued pretraining) instead of a random initialisation; its shape must be this one.

    ``tie_word_embeddings`` shares the gene embedding matrix between input and MLM output, as
    BERT and Geneformer do (the default); untied embeddings learn useful cell embeddings in fewer
    steps on small CPU runs (``stformer demo`` uses them).

    >>> ModelConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128).head_dim
    16
    """

    num_layers: int = 6
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 2048
    hidden_act: str = "relu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.02
    attention_probs_dropout_prob: float = 0.02
    tie_word_embeddings: bool = True
    init_from: str | None = None  # a saved BERT model folder whose weights start the run

    def __post_init__(self) -> None:
        _check_positive(
            self,
            "num_layers",
            "hidden_size",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "initializer_range",
            "layer_norm_eps",
        )
        _check_unit(self, "hidden_dropout_prob", "attention_probs_dropout_prob")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.hidden_act not in ("relu", "gelu", "gelu_new", "silu"):
            raise ValueError(
                f"ModelConfig.hidden_act must be one of relu, gelu, gelu_new, silu; got {self.hidden_act!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_ConfigMixin):
    """A pretraining run: optimisation, masking and bookkeeping (both the HF and Lightning engines).

    ``eval_fraction`` holds out that fraction of the corpus for a validation loss every
    ``eval_steps`` (default ``save_steps``); ``early_stopping_patience`` > 0 stops after that many
    evaluations without an improvement larger than ``early_stopping_min_delta``.
    ``mixed_precision="auto"`` is bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU.
    ``batch_form="packed"`` sends unpadded batches (used unpadded with flash-attention; SDPA
    gets them re-padded). ``masked_positions_only`` computes MLM logits only at masked tokens.
    ``report_to`` names the experiment trackers of the run: ``"auto"`` (TensorBoard events in
    ``logs/tensorboard`` when tensorboardX or tensorboard is installed), ``"none"``, or a
    comma-separated list of ``tensorboard``, ``wandb`` and ``mlflow`` (each must be installed;
    see :func:`stformer_train.progress.resolve_report_to`).

    >>> TrainConfig(max_steps=20, eval_fraction=0.1, early_stopping_patience=2).eval_fraction
    0.1
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.001
    warmup_steps: float = 0.1
    lr_scheduler_type: str = "linear"
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    num_train_epochs: float = 1.0
    max_steps: int = -1
    mlm_probability: float = 0.15
    group_by_length: bool = True
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    seed: int = 42
    eval_fraction: float = 0.0
    eval_steps: int | None = None
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"
    batch_form: str = "padded"
    masked_positions_only: bool = True
    report_to: str = "auto"

    def __post_init__(self) -> None:
        _check_positive(
            self,
            "learning_rate",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "num_train_epochs",
            "logging_steps",
            "save_steps",
            "save_total_limit",
        )
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(
                f"TrainConfig.warmup_steps must be >= 0 (a fraction < 1 or a step count), got {self.warmup_steps}"
            )
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(
                f"TrainConfig.mlm_probability must be in (0, 1), got {self.mlm_probability}"
            )
        _check_unit(self, "eval_fraction")
        if self.eval_steps is not None and self.eval_steps <= 0:
            raise ValueError(
                f"TrainConfig.eval_steps must be > 0 or None (= save_steps), got {self.eval_steps}"
            )
        if self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise ValueError(
                "TrainConfig.early_stopping_patience (0 = off) and early_stopping_min_delta must be >= 0"
            )
        if self.early_stopping_patience and not self.eval_fraction:
            raise ValueError(
                "TrainConfig.early_stopping_patience needs a validation split: set eval_fraction > 0"
            )
        if self.mixed_precision not in PRECISION_MODES:
            raise ValueError(
                f"TrainConfig.mixed_precision must be auto, no, bf16 or fp16; got {self.mixed_precision!r}"
            )
        if self.batch_form not in ("padded", "packed"):
            raise ValueError(
                f"TrainConfig.batch_form must be 'padded' or 'packed', got {self.batch_form!r}"
            )
        trackers = {t.strip().lower() for t in str(self.report_to).split(",")} - {""}
        if not trackers <= {"auto", "none", "tensorboard", "wandb", "mlflow"} or (
            trackers & {"auto", "none"} and len(trackers) > 1
        ):
            raise ValueError(
                "TrainConfig.report_to must be auto, none or a comma-separated list of "
                f"tensorboard, wandb, mlflow; got {self.report_to!r}"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"TrainConfig.max_steps must be -1 (use epochs) or > 0, got {self.max_steps}"
            )


TRAIN_DEFAULTS = TrainConfig()
"""stformer's own training defaults, the one set: :func:`stformer_train.hf.pretrain_mlm`,
:func:`stformer_train.lightning.pretrain_lightning`, ``MLMTrainingPlan``, the ``stformer`` CLI and
``stformer_dist.ray_pretrain_mlm`` all start from it (e.g. a warm-up over the first 10% of the
steps). stFormer's documented API (``get_training_arguments``, ``PretrainML``) keeps its own
documented defaults in its own signatures (``PretrainML``: 10,000 warm-up
steps, batch 12, 3 epochs)."""


def merge_config(config: _C, overrides: dict[str, Any] | None = None, /, **explicit: Any) -> _C:
    """A copy of a config with ``overrides`` and then ``explicit`` fields set (explicit wins).

    This is the one merge of stformer's configs: each training path starts from the configs it
    was given and sets only what its own arguments say, instead of copying every field into a
    job struct. ``None`` values in ``overrides`` are skipped (an unset option); an unknown field
    raises ``TypeError`` naming the closest field.

    >>> merge_config(TrainConfig(), {"seed": 1, "max_steps": None}, seed=2).seed
    2
    """
    known = [f.name for f in fields(config)]  # type: ignore[arg-type]
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(explicit)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {sorted(known)}"
            raise TypeError(f"{type(config).__name__} has no field {key!r}{hint}")
    return dataclasses.replace(config, **values)  # type: ignore[type-var]


CONFIG_SECTIONS = ("model", "train", "tokenize")

TOKENIZE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "max_length": int,
    "gene_id_key": str,
    "layer": str,
}
"""The ``tokenize:`` section of a run config (used when ``pretrain`` reads .h5ad files)."""

CONFLICTS: dict[str, tuple[tuple[str, Any], ...]] = {
    "train.num_train_epochs": (("train.max_steps", -1),),
    "model.hidden_size": (("model.intermediate_size", None),),
}
"""A field given explicitly resets these fields of a config file (``None``: removed): e.g.
``--epochs 2`` over a file holding ``max_steps: 10`` trains 2 epochs."""


def apply_overrides(
    data: dict[str, Any], overrides: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A run config's sections with explicit values (command-line flags) set over the file's.

    ``overrides`` maps a section to ``{field: value}``; ``None`` values (a flag not given) are
    skipped. An explicit field also resets the file's fields that would contradict it
    (:data:`CONFLICTS`), so the flag wins also where two fields decide one thing.

    >>> apply_overrides({"train": {"max_steps": 10}}, {"train": {"num_train_epochs": 2}})["train"]
    {'max_steps': -1, 'num_train_epochs': 2}
    """
    out = {section: dict(data.get(section) or {}) for section in CONFIG_SECTIONS}
    for section, values in overrides.items():
        for key, value in values.items():
            if value is None:
                continue
            for dotted, reset in CONFLICTS.get(f"{section}.{key}", ()):
                other_section, other = dotted.split(".")
                explicit = (overrides.get(other_section) or {}).get(other)
                if other in out[other_section] and explicit is None:
                    if reset is None:
                        del out[other_section][other]
                    else:
                        out[other_section][other] = reset
            out[section][key] = value
    return out


def _type_name(kinds: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(names.get(k, k.__name__) for k in kinds if k is not type(None))


def _field_kinds(cls: type) -> dict[str, tuple[type, ...]]:
    import types
    import typing

    hints = typing.get_type_hints(cls)
    kinds: dict[str, tuple[type, ...]] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds[f.name] = tuple(a for a in args if isinstance(a, type))
    return kinds


def _check_value(value: Any, kinds: tuple[type, ...]) -> Any:
    """``value`` as one of ``kinds`` (an int is a float; a numeric string such as ``1e-3``,
    which YAML reads as a string, is a number), or raise ``TypeError``."""
    if value is None and type(None) in kinds:
        return None
    if isinstance(value, bool):
        if bool in kinds:
            return value
        raise TypeError
    import numbers

    if int in kinds and isinstance(value, numbers.Integral):  # numpy ints from a search too
        return int(value)
    if float in kinds and isinstance(value, numbers.Real):
        return float(value)
    if str in kinds and isinstance(value, str):
        return value
    if float in kinds and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise TypeError


def validate_section(
    path: Path, section: str, data: Any, kinds: dict[str, tuple[type, ...]]
) -> dict[str, Any]:
    """Check one section of a config file: a mapping of known fields with values of their types.

    Raises :class:`stformer_data.InputError` naming the file, the field and the fix.
    """
    from stformer_data import InputError

    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(
            path,
            f"{section}:",
            f"must be a mapping of fields, got {type(data).__name__}",
            f"write `{section}:` followed by indented `field: value` lines",
        )
    checked: dict[str, Any] = {}
    for key, value in data.items():
        if key not in kinds:
            close = difflib.get_close_matches(str(key), list(kinds), n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(kinds))}"
            )
            raise InputError(path, f"{section}.{key}", "is not a known field", hint)
        try:
            checked[key] = _check_value(value, kinds[key])
        except TypeError:
            raise InputError(
                path,
                f"{section}.{key}",
                f"is {value!r} ({type(value).__name__}); it must be {_type_name(kinds[key])}",
                f"write {section}.{key} as {_type_name(kinds[key])}, or drop it to use the default",
            ) from None
    return checked


def load_config_file(path: str | PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON run config with optional ``model``, ``train`` and ``tokenize`` sections.

    This is the format ``stformer pretrain --config`` reads and hyperparameter searches write.
    YAML is read with ``yaml.safe_load`` (no Python tags); every field is checked against
    :class:`ModelConfig` / :class:`TrainConfig` / :data:`TOKENIZE_FIELDS` (known name, value of
    the field's type). Any problem is one :class:`stformer_data.InputError` naming the file and
    the field.
    """
    from stformer_data import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "--config", "does not exist", "pass a YAML or JSON file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            path, "--config", f"cannot be read ({exc})", "pass a YAML or JSON text file"
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.constructor.ConstructorError as exc:
            raise InputError(
                path,
                f"line {exc.problem_mark.line + 1}" if exc.problem_mark else "YAML",
                f"has a tag stformer does not run ({exc.problem})",
                "remove tags such as !!python/object: a config file holds plain values",
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise InputError(
                path,
                f"line {mark.line + 1}" if mark else "YAML",
                f"is not valid YAML ({getattr(exc, 'problem', None) or exc})",
                "fix the YAML syntax (indentation, `key: value`)",
            ) from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(
                path, "JSON", f"is not valid JSON ({exc})", "fix the JSON syntax, or use .yaml"
            ) from None
    if not isinstance(data, dict) or set(data) - set(CONFIG_SECTIONS):
        raise InputError(
            path,
            "top-level keys",
            f"must be among {', '.join(CONFIG_SECTIONS)}; got {sorted(data) if isinstance(data, dict) else data!r}",
            "put ModelConfig fields under `model:` and TrainConfig fields under `train:`",
        )
    tokenize_kinds = {
        k: v if isinstance(v, tuple) else (v, type(None)) for k, v in TOKENIZE_FIELDS.items()
    }
    out: dict[str, Any] = {}
    for section, kinds in (
        ("model", _field_kinds(ModelConfig)),
        ("train", _field_kinds(TrainConfig)),
        ("tokenize", tokenize_kinds),
    ):
        if section in data:
            out[section] = validate_section(path, section, data[section], kinds)
    return out
