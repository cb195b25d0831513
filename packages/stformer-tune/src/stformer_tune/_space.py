"""The search space: stFormer's dict form, validated into :class:`ParamSpec` objects.

::

    {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
     "per_device_train_batch_size": {"type": "categorical", "values": [4, 8, 16]},
     "warmup_steps": {"type": "int", "low": 0, "high": 20},
     "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}}

A hyperparameter is a field of :class:`~stformer_train.TrainConfig` or
:class:`~stformer_train.ModelConfig` (the two share no names).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_train import ModelConfig, TrainConfig

SPACE_TYPES = ("loguniform", "uniform", "int", "categorical")
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))
MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))
#: Fields that are not hyperparameters of a search (bookkeeping, or they change the objective itself).
NOT_SEARCHABLE = frozenset(
    {
        "eval_fraction",
        "eval_steps",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "max_position_embeddings",
        "mixed_precision",
        "batch_form",
        "masked_positions_only",
        "report_to",
        "seed",
    }
)

#: The search space when none is given (``stformer tune`` without ``--space``), in the spirit of
#: transformers' ``Trainer.hyperparameter_search`` default (learning rate on a log scale, batch
#: size) plus what matters for a small gene-token BERT: warm-up (a fraction of the steps), weight
#: decay and the model size. ``--layers``/``--hidden`` fix the model size and drop it from here.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
    "warmup_steps": {"type": "uniform", "low": 0.0, "high": 0.2},
    "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
    "per_device_train_batch_size": {"type": "categorical", "values": [8, 16, 32]},
    "num_layers": {"type": "categorical", "values": [2, 4, 6]},
    "hidden_size": {"type": "categorical", "values": [64, 128, 256]},
}
SEARCHABLE = frozenset((TRAIN_FIELDS | MODEL_FIELDS) - NOT_SEARCHABLE)


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"search space {name!r}: {key!r} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """One hyperparameter's distribution.

    ``loguniform`` and ``uniform`` draw floats in ``[low, high]`` (``loguniform`` needs ``low > 0``);
    ``int`` draws integers in ``[low, high]`` (``log=True`` on a log scale); ``categorical`` draws
    one of ``values``.

    >>> ParamSpec(name="learning_rate", type="loguniform", low=1e-5, high=1e-3).type
    'loguniform'
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    log: bool = False

    def __post_init__(self) -> None:
        name = self.name
        if name not in SEARCHABLE:
            why = (
                "is not searched (it defines the objective or the bookkeeping)"
                if name in NOT_SEARCHABLE
                else "is not a TrainConfig or ModelConfig field"
            )
            raise ValueError(
                f"search space {name!r}: unknown hyperparameter, it {why}; "
                f"searchable: {sorted(SEARCHABLE)}"
            )
        if self.type not in SPACE_TYPES:
            raise ValueError(
                f"search space {name!r}: unknown type {self.type!r}; use one of {list(SPACE_TYPES)}"
            )
        if self.type == "categorical":
            if not self.values:
                raise ValueError(
                    f"search space {name!r}: categorical needs a non-empty 'values' list"
                )
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError(
                    f"search space {name!r}: categorical 'values' repeat an entry: {list(self.values)}"
                )
            if not all(v is None or isinstance(v, bool | int | float | str) for v in self.values):
                raise ValueError(
                    f"search space {name!r}: categorical values must be numbers, strings, "
                    f"booleans or null, got {list(self.values)}"
                )
            return
        if self.low is None or self.high is None:
            raise ValueError(f"search space {name!r}: type {self.type!r} needs 'low' and 'high'")
        low, high = _number(name, "low", self.low), _number(name, "high", self.high)
        if low >= high:
            raise ValueError(f"search space {name!r}: 'low' ({low}) must be < 'high' ({high})")
        if self.type == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(
                f"search space {name!r}: type 'int' needs integer bounds, got {low}..{high}"
            )
        if (self.type == "loguniform" or self.log) and low <= 0:
            raise ValueError(f"search space {name!r}: a log scale needs 'low' > 0, got {low}")

    def distribution(self):
        """The equivalent ``optuna.distributions`` object (used by Optuna and by Ray's OptunaSearch)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "categorical":
            return CategoricalDistribution(list(self.values))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return FloatDistribution(float(self.low), float(self.high), log=self.type == "loguniform")  # type: ignore[arg-type]

    def suggest(self, trial) -> Any:
        """Draw this hyperparameter from an ``optuna.Trial``."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(
            self.name,
            float(self.low),
            float(self.high),  # type: ignore[arg-type]
            log=self.type == "loguniform",
        )

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "values": list(self.values)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: ``{name: ParamSpec}`` in the order given.

    >>> space = SearchSpace.from_dict({"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}})
    >>> space.names
    ('learning_rate',)
    """

    params: tuple[ParamSpec, ...]

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("search space is empty: give at least one hyperparameter")

    @classmethod
    def from_dict(cls, space: Mapping[str, Any]) -> SearchSpace:
        """Validate stFormer's dict form (see the module docstring); errors name the offending key."""
        if isinstance(space, SearchSpace):
            return space
        if not isinstance(space, Mapping):
            raise ValueError(
                f"search space must be a mapping of hyperparameter -> distribution, got {type(space).__name__}"
            )
        params = []
        for name, spec in space.items():
            if not isinstance(spec, Mapping):
                raise ValueError(
                    f"search space {name!r}: must be a mapping with 'type' and its bounds or values, "
                    f"got {spec!r}"
                )
            spec = dict(spec)
            if "choices" in spec and "values" not in spec:  # Optuna's word for the same thing
                spec["values"] = spec.pop("choices")
            allowed = {"type", "low", "high", "values", "log"}
            unknown = sorted(set(spec) - allowed)
            if unknown:
                raise ValueError(
                    f"search space {name!r}: unknown key(s) {unknown}; allowed: {sorted(allowed)}"
                )
            if "type" not in spec:
                raise ValueError(
                    f"search space {name!r}: missing 'type' (one of {list(SPACE_TYPES)})"
                )
            values = spec.get("values", ())
            if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
                raise ValueError(f"search space {name!r}: 'values' must be a list, got {values!r}")
            params.append(
                ParamSpec(
                    name=str(name),
                    type=spec["type"],
                    low=spec.get("low"),
                    high=spec.get("high"),
                    values=tuple(values),
                    log=bool(spec.get("log", False)),
                )
            )
        return cls(tuple(params))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.to_dict() for p in self.params}

    def without(self, names) -> SearchSpace:
        """This space less the hyperparameters in ``names`` (fixed by the caller instead)."""
        return SearchSpace(tuple(p for p in self.params if p.name not in set(names)))

    def __getitem__(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def default_search_space() -> SearchSpace:
    """:data:`DEFAULT_SPACE` as a :class:`SearchSpace`.

    >>> default_search_space().names[:2]
    ('learning_rate', 'warmup_steps')
    """
    return SearchSpace.from_dict(DEFAULT_SPACE)


def load_search_space(path: str | PathLike[str]) -> SearchSpace:
    """Read a search space from a YAML or JSON file (the dict form, optionally under ``search_space:``)."""
    from stformer_data import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "--space", "does not exist", "pass a YAML or JSON search-space file")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, Mapping) and set(data) == {"search_space"}:
        data = data["search_space"]
    try:
        return SearchSpace.from_dict(data)
    except ValueError as exc:
        raise InputError(
            path, "search space", str(exc), "see the stformer-tune README for the dict form"
        ) from exc
