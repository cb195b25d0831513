"""What a training run prints: one progress bar, numeric metrics, and no third-party noise.

Both engines share this module: :func:`format_metrics` writes the one compact line per
evaluation, :func:`resolve_report_to` turns ``TrainConfig.report_to`` into the experiment
trackers to use (with a one-line install hint when one is missing) and :func:`quiet_third_party`
silences, by their exact message, the warnings of other libraries that say nothing about the
user's run (DeepSpeed's "Setting accelerator to CPU" on a CPU machine, Lightning's tips).
The engine-specific pieces are :class:`stformer_train.hf.MetricsProgressCallback` and
:class:`stformer_train.lightning.StepProgressBar`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

#: The experiment trackers ``--report-to`` accepts, with the import name each needs.
REPORT_BACKENDS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboardX", "tensorboard"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}
REPORT_CHOICES = ("auto", "none", *REPORT_BACKENDS)

#: Messages of other libraries that concern no stformer user (matched exactly, per source).
_DEEPSPEED_NOISE = ("Setting accelerator to CPU",)
_LIGHTNING_NOISE = (
    "💡 Tip: For seamless cloud logging",  # an advertisement for an optional package
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "LOCAL_RANK:",
    "`Trainer.fit` stopped:",  # our own bar's summary line says how many steps ran
)


class MissingBackend(ImportError):
    """An optional package is not installed; the message is one line with the install command."""


def install_hint(package: str, *, extra: str | None = None, what: str | None = None) -> str:
    """One line that says how to install ``package`` with uv and with pip.

    With ``extra`` the package comes with an extra of ``stformer-cli`` (``tune``, ``dist``).

    >>> install_hint("wandb", what="--report-to wandb")
    '--report-to wandb needs wandb: uv pip install wandb  (pip: pip install wandb)'
    """
    head = f"{what} needs {package}" if what else f"needs {package}"
    if extra:
        return (
            f"{head}: uv sync --package stformer-cli --extra {extra}  "
            f'(pip: pip install "stformer-cli[{extra}]")'
        )
    return f"{head}: uv pip install {package}  (pip: pip install {package})"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a None entry in sys.modules, a broken package
        return False


def resolve_report_to(report_to: str) -> list[str]:
    """The trackers of ``TrainConfig.report_to`` (``"auto"``: TensorBoard when installed).

    ``report_to`` is ``auto``, ``none`` or a comma-separated list of ``tensorboard``, ``wandb``
    and ``mlflow``. A tracker whose package is missing raises :class:`MissingBackend` naming the
    install command; ``auto`` never does.

    >>> resolve_report_to("none")
    []
    """
    names = [n.strip().lower() for n in str(report_to).split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if any(map(_installed, REPORT_BACKENDS["tensorboard"])) else []
    for name in names:
        if name not in REPORT_BACKENDS:
            raise ValueError(
                f"report_to: unknown tracker {name!r}; use auto, none or a comma-separated "
                f"list of {', '.join(REPORT_BACKENDS)}"
            )
        if not any(map(_installed, REPORT_BACKENDS[name])):
            raise MissingBackend(install_hint(REPORT_BACKENDS[name][0], what=f"--report-to {name}"))
    return list(dict.fromkeys(names))


def format_value(value: Any) -> str:
    """A metric as a short number: 4 significant digits, scientific for small learning rates."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.3e}" if abs(value) < 1e-2 else f"{value:.4g}"


def format_metrics(metrics: Mapping[str, Any], *, step: int | None = None) -> str:
    """One compact line of metrics, e.g. ``step 20  eval_loss 4.616  epoch 1.2``.

    >>> format_metrics({"eval_loss": 4.61612, "eval_runtime": 0.44}, step=20)
    'step 20  eval_loss 4.616  eval_runtime 0.44'
    """
    parts = [] if step is None else [f"step {step}"]
    parts += [f"{k} {format_value(v)}" for k, v in metrics.items() if not k.endswith("_per_second")]
    return "  ".join(parts)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad record is not ours to judge
            return True
        return not message.lstrip().startswith(self.prefixes)


_installed_filters = False


def quiet_third_party() -> None:
    """Silence the messages of other libraries that do not concern the user, by exact message.

    DeepSpeed's "Setting accelerator to CPU" (printed on every CPU machine when transformers
    imports it), Lightning's advertisement for litlogger and its "GPU available: False" device
    lines, and Lightning's deprecation of torch's ``LeafSpec`` (Lightning's own code, not the
    user's). Everything else — warnings from stformer, errors, all other warnings — is kept.
    Safe to call more than once.
    """
    global _installed_filters
    if _installed_filters:
        return
    _installed_filters = True
    logging.getLogger("DeepSpeed").addFilter(_DropMessages(_DEEPSPEED_NOISE))
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).addFilter(_DropMessages(_LIGHTNING_NOISE))
    for message in (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        # stformer resumes into its own run directory, with a batch sampler that skips the
        # batches already done (lightning.ResumableBatchSampler): both warnings are false alarms
        r"Checkpoint directory .* exists and is not empty",
        r"You're resuming from a checkpoint that ended before the epoch ended",
    ):
        warnings.filterwarnings("ignore", message=message, category=Warning)
