"""Ray Train: stformer pretraining on a Ray cluster (Lightning over h5ad files, or the HF Trainer).

Both paths run in Ray Train's ``TorchTrainer``: one worker process per ``ScalingConfig`` worker,
torch.distributed set up by Ray (gloo on CPU, NCCL on GPU), checkpoints reported with
``ray.train.report`` and persisted under ``RunConfig(storage_path=...)``. With
``FailureConfig(max_failures=N)`` Ray restarts the whole worker group after a lost worker, and the
training function resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_dist._ray_env import prepare_ray_environment

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.ckpt"


def _import_ray():
    prepare_ray_environment()
    try:
        import ray
        import ray.train  # noqa: F401
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise ImportError(
            'Ray Train is needed here: pip install "ray[train]" (or "stformer-dist")'
        ) from exc
    return ray


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    **init_kwargs: Any,
):
    """Join a running Ray cluster (``address``, e.g. ``"auto"`` or ``"ray://head:10001"``) or start a
    local one; an already initialised Ray is reused. ``init_kwargs`` go to ``ray.init``
    (e.g. ``log_to_driver=False``). Returns the ``ray`` module."""
    ray = _import_ray()  # sets the environment Ray needs first (stformer_dist._ray_env)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "runtime_env": dict(runtime_env or {}) or None,
            **init_kwargs,
        }
        if address is None:
            kwargs["num_cpus"] = num_cpus
        ray.init(address=address, **kwargs)
    return ray


def scaling_config(
    num_workers: int | None = None,
    *,
    is_gpu: bool = True,
    resources_per_worker: Mapping[str, float] | None = None,
):
    """A ``ScalingConfig`` from the cluster's resources.

    GPU workers (one per GPU by default) when ``is_gpu`` and the cluster has GPUs; otherwise CPU
    workers, with a warning when GPUs were asked for. ``num_workers=None`` on CPU gives one worker
    per ``resources_per_worker["CPU"]`` (default 1) CPUs of the cluster.
    """
    ray = _import_ray()
    from ray.train import ScalingConfig

    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1 or None, got {num_workers}")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    use_gpu = bool(is_gpu and gpus > 0)
    if is_gpu and not use_gpu:
        warnings.warn(
            "is_gpu=True but the Ray cluster has no GPU: training on CPU workers",
            RuntimeWarning,
            stacklevel=2,
        )
    per_worker = dict(resources_per_worker or ({"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}))
    if not use_gpu:
        per_worker.pop("GPU", None)
    if num_workers is None:
        num_workers = (
            max(1, gpus // max(1, int(per_worker.get("GPU", 1))))
            if use_gpu
            else max(1, int(cpus // max(per_worker.get("CPU", 1), 1e-9)))
        )
    return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def run_config(
    storage_path: str | PathLike[str], name: str | None, max_failures: int, num_to_keep: int = 2
):
    """``RunConfig`` with a local or remote storage path, ``FailureConfig`` and ``CheckpointConfig``."""
    _import_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    if max_failures < -1:
        raise ValueError(f"max_failures must be >= -1 (-1: retry forever), got {max_failures}")
    storage = str(storage_path)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
    )


def _threads_per_worker(resources: Mapping[str, float] | None) -> int:
    return max(1, int((resources or {}).get("CPU", 1)))


# ------------------------------------------------------------------------------------------------
# Lightning path
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _TokenSource:
    """Where a Ray Lightning worker reads its cells and how it tokenizes them."""

    files: list[str]
    split: Any
    vocab: Any
    medians: dict[str, float]
    model_input_size: int
    gene_id_key: str | None


@dataclass(frozen=True, kw_only=True)
class _LightningJob:
    """What every Ray worker of :class:`RayPretrainRunner` gets: the configs whole, the data, the worker."""

    data: _TokenSource
    model: Any  # stformer_train.ModelConfig
    train: Any  # stformer_train.TrainConfig
    ckpt_path: str | None
    use_gpu: bool
    threads: int
    enable_progress_bar: bool
    callbacks: list[Any] = field(default_factory=list)


def _report_checkpoint(trainer: Any, metrics: dict[str, Any]) -> None:
    """All ranks: save a Lightning checkpoint (rank 0 writes) and report it to Ray Train."""
    import ray.train
    from ray.train import Checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="stformer-ray-ckpt-"))
    try:
        trainer.save_checkpoint(str(tmp / CHECKPOINT_FILE))
        rank0 = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(tmp)) if rank0 else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lightning_report_callback(every_n_steps: int, max_steps: int):
    import pytorch_lightning as pl

    class RayStepReport(pl.Callback):
        """Report metrics and a checkpoint to Ray every ``every_n_steps`` optimiser steps and at the end."""

        def __init__(self):
            self.start_step = 0
            self.reported_step = -1

        def on_train_start(self, trainer, pl_module):
            self.start_step = trainer.global_step

        def _metrics(self, trainer) -> dict[str, Any]:
            out = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if getattr(v, "numel", lambda: 1)() == 1
            }
            out.update(
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                resumed_from_step=self.start_step,
            )
            return out

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step % every_n_steps == 0 and step != self.reported_step and step < max_steps:
                self.reported_step = step
                _report_checkpoint(trainer, self._metrics(trainer))

        def on_train_end(self, trainer, pl_module):
            if trainer.global_step != self.reported_step:
                self.reported_step = trainer.global_step
                _report_checkpoint(trainer, self._metrics(trainer))

    return RayStepReport()


def _lightning_train_loop(job: _LightningJob) -> None:
    """The Ray Train worker function of :class:`RayPretrainRunner` (runs in every worker process)."""
    import pytorch_lightning as pl
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from stformer_data import RankTokenizerConfig, RankValueTokenizer
    from stformer_train.assemble import assemble
    from stformer_train.lightning import H5adStreamDataModule, MLMTrainingPlan
    from stformer_train.training import StepSeededCollator

    train, data = job.train, job.data
    torch.set_num_threads(job.threads)
    pl.seed_everything(train.seed, workers=True, verbose=False)
    tokenizer = RankValueTokenizer(
        data.vocab, data.medians, RankTokenizerConfig(model_input_size=data.model_input_size)
    )
    parts = assemble(data.vocab, job.model, train, monitor="val_loss")
    collator = StepSeededCollator(parts.collator, seed=train.seed)
    dm = H5adStreamDataModule(
        data.files,
        split=data.split,
        batch_size=train.per_device_train_batch_size,
        tokenizer=tokenizer,
        seed=train.seed,
        dataset_kwargs={"collate_fn": collator, "gene_id_key": data.gene_id_key},
    )
    dm.setup("fit")
    max_epochs = int(train.num_train_epochs)
    max_steps = (
        train.max_steps if train.max_steps > 0 else max(1, len(dm.datasets["train"]) * max_epochs)
    )
    plan = MLMTrainingPlan.from_config(parts.model, train, max_steps=max_steps)
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1 if train.max_steps > 0 else max_epochs,
        accelerator="gpu" if job.use_gpu else "cpu",
        precision=parts.precision.lightning,
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[
            _lightning_report_callback(train.save_steps, max_steps),
            *job.callbacks,
        ],
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=job.enable_progress_bar,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        limit_val_batches=0 if "val" not in dm.datasets else None,
    )
    trainer = prepare_trainer(trainer)
    ckpt_path = job.ckpt_path
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted attempt: continue from the last reported checkpoint
        with checkpoint.as_directory() as folder:
            local = Path(tempfile.mkdtemp(prefix="stformer-ray-resume-")) / CHECKPOINT_FILE
            shutil.copy2(Path(folder) / CHECKPOINT_FILE, local)
        ckpt_path = str(local)
    trainer.fit(plan, datamodule=dm, ckpt_path=ckpt_path)


class RayPretrainRunner:
    """Pretrain stformer's masked-LM on h5ad files with Ray Train (formerly ``RayTrainRunner``; protoplast's documented runner is :class:`RayTrainRunner`).

    Cells stream from backed h5ad files through :class:`stformer_data.torch.H5adStreamDataset`
    (each Ray worker reads its own shard), are tokenized on the fly with a rank-value tokenizer and
    masked by stformer-collate; the model is stformer-train's :class:`MLMTrainingPlan` under
    ``RayDDPStrategy``.

    Parameters
    ----------
    vocab
        The gene vocabulary (a :class:`stformer_data.GeneVocab`).
    medians
        Non-zero gene medians (gene id → median) for rank-value tokens.
    model
        The encoder shape (:class:`stformer_train.ModelConfig`).
    model_input_size
        Longest token sequence.
    address
        A running cluster (``"auto"``, ``"ray://head:10001"``); ``None`` starts a local one (or
        reuses an initialised Ray).
    runtime_env
        Ray runtime environment for the workers.
    learning_rate, weight_decay, warmup_steps, mlm_probability
        Optimisation and masking (stFormer's defaults).
    gene_id_key
        ``var`` column with gene ids (default: detected).

    Notes
    -----
    The optimisation arguments become one :class:`stformer_train.TrainConfig`
    (:attr:`train_config`, fp32); :meth:`train` sets each run's batch size, length, checkpoint
    cadence and seed on a copy with :func:`stformer_train.merge_config` and sends it to the workers
    whole, with the :class:`~stformer_train.ModelConfig`. Each worker builds model, collator and
    precision with :func:`stformer_train.assemble`, as the single-process paths do.

    >>> runner = RayPretrainRunner(vocab=vocab, medians=medians, model=ModelConfig())  # doctest: +SKIP
    >>> result = runner.train(["a.h5ad", "b.h5ad"], batch_size=64, max_epochs=1, num_workers=2,
    ...                       is_gpu=False)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        vocab: Any,
        medians: Mapping[str, float],
        model: Any = None,
        model_input_size: int = 2048,
        address: str | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.001,
        warmup_steps: float = 0.0,
        mlm_probability: float = 0.15,
        gene_id_key: str | None = None,
    ) -> None:
        from stformer_train import ModelConfig, TrainConfig

        if model_input_size <= 0:
            raise ValueError(
                f"RayPretrainRunner.model_input_size must be > 0, got {model_input_size}"
            )
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(
                f"RayPretrainRunner.mlm_probability must be in (0, 1), got {mlm_probability}"
            )
        self.vocab, self.medians = vocab, dict(medians)
        self.model = model or ModelConfig()
        if self.model.max_position_embeddings < model_input_size:
            raise ValueError(
                f"RayPretrainRunner.model_input_size ({model_input_size}) exceeds the model's "
                f"max_position_embeddings ({self.model.max_position_embeddings})"
            )
        self.model_input_size = model_input_size
        self.address, self.runtime_env = address, runtime_env
        # the run's TrainConfig; train() sets the length, batch and seed of each run on a copy.
        # This runner has always trained in fp32 (its signature has no precision argument).
        self.train_config = TrainConfig(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            mlm_probability=mlm_probability,
            mixed_precision="no",
        )
        self.gene_id_key = gene_id_key

    @property
    def learning_rate(self) -> float:
        return self.train_config.learning_rate

    @property
    def weight_decay(self) -> float:
        return self.train_config.weight_decay

    @property
    def warmup_steps(self) -> float:
        return self.train_config.warmup_steps

    @property
    def mlm_probability(self) -> float:
        return self.train_config.mlm_probability

    def train(
        self,
        file_paths: Sequence[str | PathLike[str]],
        batch_size: int = 256,
        test_size: float = 0.0,
        val_size: float = 0.0,
        max_epochs: int = 1,
        num_workers: int | None = None,
        ckpt_path: str | PathLike[str] | None = None,
        *,
        is_gpu: bool = True,
        resources_per_worker: Mapping[str, float] | None = None,
        result_storage_path: str | PathLike[str] = "~/stformer_ray_results",
        name: str | None = None,
        max_steps: int = -1,
        checkpoint_every_n_steps: int = 500,
        max_failures: int = 0,
        random_seed: int = 42,
        group_key: str | None = None,
        enable_progress_bar: bool = False,
        callbacks: Sequence[Any] = (),
    ):
        """Train on ``file_paths``; returns Ray Train's ``Result`` (``.metrics``, ``.checkpoint``, ``.path``).

        Parameters
        ----------
        file_paths
            Raw-count ``.h5ad`` files.
        batch_size
            Cells per batch and worker.
        test_size, val_size
            Held-out shares of the cells (by cell, or by ``obs[group_key]`` groups).
        max_epochs, max_steps
            Length of the run (``max_steps > 0`` wins).
        num_workers
            Ray Train workers (default: one per GPU, or per CPU on a CPU cluster).
        ckpt_path
            A Lightning checkpoint to start from (a restarted attempt resumes from Ray's own instead).
        is_gpu, resources_per_worker
            GPU workers when the cluster has GPUs (else CPU workers and a warning); resources each.
        result_storage_path, name
            Where Ray persists results and checkpoints (a local folder or ``s3://...``).
        checkpoint_every_n_steps, max_failures
            Checkpoint cadence, and how many worker-group failures Ray recovers from.
        callbacks
            Extra Lightning callbacks (they are pickled to the workers).
        """
        from stformer_data import CellSplit, InputError
        from stformer_train.config import merge_config

        files = [Path(f).expanduser().resolve() for f in file_paths]
        if not files:
            raise ValueError("file_paths must name at least one .h5ad file")
        for f in files:
            if not f.is_file():
                raise InputError(
                    f, "file_paths", "does not exist", "pass existing raw-count .h5ad files"
                )
        if batch_size < 1 or max_epochs < 1 or checkpoint_every_n_steps < 1:
            raise ValueError(
                f"batch_size, max_epochs and checkpoint_every_n_steps must be >= 1, got {batch_size}, "
                f"{max_epochs}, {checkpoint_every_n_steps}"
            )
        if not (0.0 <= test_size < 1.0 and 0.0 <= val_size < 1.0 and test_size + val_size < 1.0):
            raise ValueError(
                f"test_size and val_size must be in [0, 1) with a sum < 1, got {test_size}, {val_size}"
            )
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise InputError(
                Path(ckpt_path),
                "ckpt_path",
                "does not exist",
                "pass a Lightning .ckpt file or None",
            )
        connect(self.address, runtime_env=self.runtime_env)  # the environment first, then Ray
        from ray.train.torch import TorchTrainer

        scaling = scaling_config(
            num_workers, is_gpu=is_gpu, resources_per_worker=resources_per_worker
        )
        split = CellSplit.create(
            files,
            fractions=(1.0 - test_size - val_size, val_size, test_size),
            group_key=group_key,
            seed=random_seed,
        )
        job = _LightningJob(
            data=_TokenSource(
                files=[str(f) for f in files],
                split=split,
                vocab=self.vocab,
                medians=self.medians,
                model_input_size=self.model_input_size,
                gene_id_key=self.gene_id_key,
            ),
            model=self.model,
            train=merge_config(
                self.train_config,
                per_device_train_batch_size=batch_size,
                num_train_epochs=max_epochs,
                max_steps=max_steps,
                save_steps=checkpoint_every_n_steps,
                seed=random_seed,
            ),
            ckpt_path=None if ckpt_path is None else str(Path(ckpt_path).resolve()),
            use_gpu=scaling.use_gpu,
            threads=_threads_per_worker(scaling.resources_per_worker),
            enable_progress_bar=enable_progress_bar,
            callbacks=list(callbacks),
        )
        trainer = TorchTrainer(
            _lightning_train_loop,
            train_loop_config=job,
            scaling_config=scaling,
            run_config=run_config(result_storage_path, name, max_failures),
        )
        return trainer.fit()


# ------------------------------------------------------------------------------------------------
# Hugging Face path
# ------------------------------------------------------------------------------------------------


def _hf_train_loop(job: dict[str, Any]) -> None:
    """The Ray Train worker function of :func:`ray_pretrain_mlm`."""
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from stformer_train.hf import last_checkpoint, pretrain_mlm

    torch.set_num_threads(job["threads"])
    run = Path(job["run_dir"])
    checkpoint = ray.train.get_checkpoint()
    context = ray.train.get_context()
    if checkpoint is not None and context.get_local_rank() == 0:
        # a restarted attempt: put Ray's last checkpoint where the Trainer resumes from (a no-op
        # when run_dir is on shared storage and already has it)
        with checkpoint.as_directory() as folder:
            target = run / "checkpoints" / Path(folder).name
            current = last_checkpoint(run / "checkpoints")
            if current is None or current.name != target.name:
                shutil.copytree(folder, target, dirs_exist_ok=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    overrides = dict(job["overrides"])
    if not job["use_gpu"]:
        overrides.setdefault("use_cpu", True)  # Accelerate shards CPU work only with use_cpu (gloo)
    pretrain_mlm(
        job["corpus"],
        run,
        model=job["model"],
        train=job["train"],
        progress=False,
        callbacks=[RayTrainReportCallback(), *job["callbacks"]],
        **overrides,
    )


def ray_pretrain_mlm(
    corpus: str | PathLike[str],
    run_dir: str | PathLike[str],
    *,
    model: Any = None,
    train: Any = None,
    num_workers: int | None = None,
    is_gpu: bool = True,
    resources_per_worker: Mapping[str, float] | None = None,
    storage_path: str | PathLike[str] = "~/stformer_ray_results",
    name: str | None = None,
    max_failures: int = 0,
    address: str | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    **argument_overrides: Any,
):
    """:func:`stformer_train.hf.pretrain_mlm` (``STFormerPretrainer``) on a Ray cluster.

    Every Ray worker runs the same pretraining; transformers/Accelerate shard the batches over the
    process group Ray set up. ``run_dir`` gets the usual run directory (rank 0 writes it; put it on
    shared storage for several nodes). Each ``Trainer`` checkpoint (``save_steps``) is reported to
    Ray (``RayTrainReportCallback``) and persisted under ``storage_path``; after a lost worker Ray
    restarts the group (``max_failures``) and the run resumes from the last checkpoint.
    Returns Ray Train's ``Result``.

    >>> ray_pretrain_mlm("corpus", "runs/r", train=TrainConfig(max_steps=100), num_workers=2,
    ...                  is_gpu=False)  # doctest: +SKIP
    """
    from stformer_data import InputError
    from stformer_train import ModelConfig, TrainConfig

    corpus = Path(corpus).expanduser().resolve()
    if not corpus.is_dir():
        raise InputError(
            corpus, "corpus", "is not a folder", "pass a tokenized corpus (stformer tokenize)"
        )
    connect(address, runtime_env=runtime_env)  # the environment first, then Ray
    from ray.train.torch import TorchTrainer

    scaling = scaling_config(num_workers, is_gpu=is_gpu, resources_per_worker=resources_per_worker)
    job = {
        "corpus": str(corpus),
        "run_dir": str(Path(run_dir).expanduser().resolve()),
        "model": model or ModelConfig(),  # the configs travel whole (frozen dataclasses pickle)
        "train": train or TrainConfig(),
        "overrides": argument_overrides,
        "use_gpu": scaling.use_gpu,
        "callbacks": list(callbacks),
        "threads": _threads_per_worker(scaling.resources_per_worker),
    }
    trainer = TorchTrainer(
        _hf_train_loop,
        train_loop_config=job,
        scaling_config=scaling,
        run_config=run_config(storage_path, name, max_failures),
    )
    return trainer.fit()
