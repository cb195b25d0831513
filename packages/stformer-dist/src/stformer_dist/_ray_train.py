"""protoplast's ``RayTrainRunner``: a user's LightningModule and dataset class on a Ray cluster.

The driver splits the files once with the shuffle strategy (a ``SplitInfo`` of row ranges and the
metadata its ``metadata_cb`` wrote), checks that the model's ``model_keys`` are in that metadata,
and hands the split to Ray Train's ``TorchTrainer``. Every worker builds ``Model(**metadata[k] for
k in model_keys)`` and an ``AnnDataModule`` over the user's dataset class, and fits a Lightning
``Trainer`` under ``RayDDPStrategy``; ``RayTrainReportCallback`` reports metrics and a checkpoint
each epoch, and ``FailureConfig(max_failures)`` restarts the worker group after a lost worker,
resuming from the last reported checkpoint.
"""

from __future__ import annotations

import difflib
import inspect
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stformer_data import SequentialShuffleStrategy, cell_line_metadata_cb
from stformer_data.torch import DistributedAnnDataset
from stformer_dist._ray_env import prepare_ray_environment

#: the file Ray's ``RayTrainReportCallback`` writes into each reported checkpoint
LIGHTNING_CHECKPOINT = "checkpoint.ckpt"
#: strategy arguments that are not passed on to the dataset (as in protoplast)
_STRATEGY_ONLY = ("drop_last", "pre_fetch_then_batch")


def _import_ray():
    prepare_ray_environment()
    try:
        import ray
        import ray.train  # noqa: F401
        import ray.train.lightning  # noqa: F401
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise ImportError(
            'Ray Train is needed here: pip install "ray[train]" (or "stformer-dist")'
        ) from exc
    return ray


def _accepted(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Keyword names ``fn`` takes, and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


class RayTrainRunner:
    """Train a user's LightningModule on h5ad files with Ray Train (protoplast's runner).

    The constructor joins the Ray cluster at ``address`` (or the one ``ray.init`` finds, e.g. via
    ``RAY_ADDRESS``) or starts a local one; an initialised Ray is reused
    (``ignore_reinit_error``). :meth:`train` runs the training.

    Parameters
    ----------
    Model
        The LightningModule class; built on every worker as ``Model(**{k: metadata[k] for k in
        model_keys})``.
    Ds
        The dataset class: :class:`stformer_data.torch.DistributedAnnDataset` or a subclass.
    model_keys
        The metadata keys passed to ``Model`` (an empty list passes all of the metadata).
    metadata_cb
        ``metadata_cb(adata, metadata)``, called for each file, writes what ``Model`` and ``Ds``
        need into the metadata (default :func:`stformer_data.cell_line_metadata_cb`).
    before_dense_cb, after_dense_cb
        ``cb(tensor, key) -> tensor`` on every tensor of a batch, before and after densifying
        (see :class:`stformer_train.lightning.AnnDataModule`).
    shuffle_strategy
        The :class:`stformer_data.ShuffleStrategy` class that splits the files (default
        :class:`stformer_data.SequentialShuffleStrategy`).
    runtime_env_config
        Ray runtime environment for the workers, merged over the default (see Notes).
    address
        A running cluster (``"auto"``, ``"ray://head:10001"``); ``None``: ``ray.init``'s default.
    ray_trainer_strategy
        The Lightning strategy of each worker (default ``ray.train.lightning.RayDDPStrategy()``).
    sparse_key
        The matrix the dataset reads: ``"X"`` or ``"layers.<name>"``.

    Notes
    -----
    Workers run on this interpreter. On a local cluster they share this machine's files, so the
    default runtime environment only puts the current directory on their ``PYTHONPATH`` (modules
    next to the script import there); joining a cluster at ``address``, the current directory is
    uploaded as the ``working_dir`` as protoplast does. Under ``uv run`` Ray's uv hook is switched
    off (:mod:`stformer_dist._ray_env`).

    >>> runner = RayTrainRunner(Classifier, DistributedAnnDataset, ["num_genes", "num_classes"])  # doctest: +SKIP
    >>> result = runner.train(["a.h5ad", "b.h5ad"], batch_size=64, is_gpu=False)  # doctest: +SKIP
    >>> result.checkpoint  # doctest: +SKIP
    """

    def __init__(
        self,
        Model: type,
        Ds: type[DistributedAnnDataset],
        model_keys: list[str],
        metadata_cb: Callable[[Any, dict], None] = cell_line_metadata_cb,
        before_dense_cb: Callable[[Any, str | int], Any] | None = None,
        after_dense_cb: Callable[[Any, str | int], Any] | None = None,
        shuffle_strategy: type = SequentialShuffleStrategy,
        runtime_env_config: dict | None = None,
        address: str | None = None,
        ray_trainer_strategy: Any = None,
        sparse_key: str = "X",
    ) -> None:
        import pytorch_lightning as pl

        from stformer_data import ShuffleStrategy

        if not (isinstance(Model, type) and issubclass(Model, pl.LightningModule)):
            raise TypeError(
                f"Model must be a pytorch_lightning.LightningModule subclass, got {Model!r}"
            )
        if not (isinstance(Ds, type) and issubclass(Ds, DistributedAnnDataset)):
            raise TypeError(f"Ds must be a DistributedAnnDataset subclass, got {Ds!r}")
        if not (
            isinstance(shuffle_strategy, type) and issubclass(shuffle_strategy, ShuffleStrategy)
        ):
            raise TypeError(
                f"shuffle_strategy must be a ShuffleStrategy subclass, got {shuffle_strategy!r}"
            )
        if not isinstance(model_keys, list) or not all(isinstance(k, str) for k in model_keys):
            raise TypeError(f"model_keys must be a list of str, got {model_keys!r}")
        if sparse_key != "X" and not sparse_key.startswith("layers."):
            raise ValueError(f'sparse_key must be "X" or "layers.<name>", got {sparse_key!r}')
        ray = _import_ray()
        self.Model, self.Ds, self.model_keys = Model, Ds, list(model_keys)
        self.metadata_cb = metadata_cb
        self.before_dense_cb, self.after_dense_cb = before_dense_cb, after_dense_cb
        self.shuffle_strategy = shuffle_strategy
        self.sparse_key = sparse_key
        self.address = address
        self.ray_trainer_strategy = ray_trainer_strategy or ray.train.lightning.RayDDPStrategy()
        cwd = os.getcwd()
        if address is None:
            path = os.pathsep.join(p for p in (cwd, os.environ.get("PYTHONPATH")) if p)
            default: dict[str, Any] = {"env_vars": {"PYTHONPATH": path}}
        else:
            default = {"working_dir": cwd}
        self.runtime_env_config = {**default, **(runtime_env_config or {})}
        ray.init(
            address=address,
            runtime_env=self.runtime_env_config,
            ignore_reinit_error=True,
            include_dashboard=False,
        )
        self.resources = ray.cluster_resources()

    # --------------------------------------------------------------------------------------------
    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``train(**kwargs)`` into the strategy's arguments and the dataset's."""
        s_names, s_any = _accepted(self.shuffle_strategy.__init__)
        d_names, d_any = _accepted(self.Ds.__init__)
        d_any = d_any and self.Ds.__init__ is not DistributedAnnDataset.__init__
        strategy_kw = {k: v for k, v in kwargs.items() if s_any or k in s_names}
        ds_kw = {k: v for k, v in kwargs.items() if k not in _STRATEGY_ONLY}
        if not d_any:
            ds_kw = {k: v for k, v in ds_kw.items() if k in d_names}
        unknown = [k for k in kwargs if k not in strategy_kw and k not in ds_kw]
        if unknown:
            known = sorted((s_names | d_names) - {"self"})
            hint = difflib.get_close_matches(unknown[0], known, n=1)
            raise TypeError(
                f"train() got unexpected keyword argument(s) {unknown}: neither "
                f"{self.shuffle_strategy.__name__} nor {self.Ds.__name__} takes them"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        return strategy_kw, ds_kw

    def train(
        self,
        file_paths: list[str],
        batch_size: int = 2000,
        test_size: float = 0.0,
        val_size: float = 0.2,
        prefetch_factor: int = 4,
        max_epochs: int = 1,
        thread_per_worker: int | None = None,
        num_workers: int | None = None,
        result_storage_path: str = "~/protoplast_results",
        ckpt_path: str | None = None,
        is_gpu: bool = True,
        random_seed: int | None = 42,
        resource_per_worker: dict | None = None,
        is_shuffled: bool = False,
        max_failures: int = 0,
        **kwargs: Any,
    ):
        """Split the files and train on the Ray cluster; returns Ray Train's ``Result``.

        Parameters
        ----------
        file_paths
            The ``.h5ad`` files.
        batch_size
            Rows per read and per batch (the strategy's ``batch_size``).
        test_size, val_size
            Shares of the data held out for testing and validation.
        prefetch_factor
            Items each DataLoader worker reads ahead.
        max_epochs
            Epochs to train.
        thread_per_worker
            DataLoader worker processes (and CPUs) per Ray worker; default half of the
            cluster's CPUs less one, between 1 and 4.
        num_workers
            Ray Train workers; default one per GPU, or on CPU ``(CPUs - 1) // thread_per_worker``
            (at least 1).
        result_storage_path
            Where Ray keeps the metrics and checkpoints (a folder, or ``s3://...``).
        ckpt_path
            A Lightning checkpoint to resume from (``None``: from scratch).
        is_gpu
            Train on GPUs (falls back to CPU with a warning when the cluster has none).
        random_seed
            Seed of the split and of every worker (``None``: random).
        resource_per_worker
            Ray resources of each worker (default ``{"CPU": thread_per_worker}``).
        is_shuffled
            Shuffle the order of the ranges (passed to the strategy).
        max_failures
            Worker-group failures Ray recovers from (``FailureConfig``; -1: no limit).
        **kwargs
            For the strategy (e.g. ``pre_fetch_then_batch``, ``drop_last``) and the dataset class;
            an argument neither takes is a ``TypeError``.

        Returns
        -------
        ray.train.Result
            ``.metrics`` (the last reported), ``.checkpoint`` (the last, with
            ``checkpoint.ckpt``), ``.path``.
        """
        import time

        from stformer_data import InputError
        from stformer_dist._ray import run_config

        _import_ray()
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer

        files = [str(Path(f).expanduser().resolve()) for f in file_paths]
        if not files:
            raise ValueError("file_paths must name at least one .h5ad file")
        for f in files:
            if not Path(f).is_file():
                raise InputError(f, "file_paths", "does not exist", "pass existing .h5ad files")
        if batch_size < 1 or max_epochs < 1 or prefetch_factor < 1:
            raise ValueError(
                "batch_size, max_epochs and prefetch_factor must be >= 1, got "
                f"{batch_size}, {max_epochs}, {prefetch_factor}"
            )
        if ckpt_path is not None and not Path(ckpt_path).expanduser().is_file():
            raise InputError(
                ckpt_path, "ckpt_path", "does not exist", "pass a Lightning .ckpt file or None"
            )
        strategy_kw, ds_kw = self._split_kwargs(kwargs)
        cpus = int(self.resources.get("CPU", 2))
        if resource_per_worker:
            resource_per_worker = dict(resource_per_worker)
            thread_per_worker = thread_per_worker or max(1, int(resource_per_worker.get("CPU", 1)))
        else:
            if not thread_per_worker:
                thread_per_worker = min(max((cpus - 1) // 2, 1), 4)
                print(
                    f"Setting thread_per_worker to {thread_per_worker} (half of the CPUs less one, 1 to 4)"
                )
            resource_per_worker = {"CPU": thread_per_worker}
        if thread_per_worker < 1:
            raise ValueError(f"thread_per_worker must be >= 1, got {thread_per_worker}")
        gpus = int(self.resources.get("GPU", 0))
        if is_gpu and gpus == 0:
            warnings.warn(
                "`is_gpu = True` but there is no GPU found. Fallback to CPU.",
                UserWarning,
                stacklevel=2,
            )
            is_gpu = False
        if num_workers is None:
            num_workers = gpus if is_gpu else max((cpus - 1) // thread_per_worker, 1)
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if is_gpu:
            resource_per_worker.setdefault("GPU", 1)
        scaling = ScalingConfig(
            num_workers=num_workers, use_gpu=is_gpu, resources_per_worker=resource_per_worker
        )
        print(f"Using {num_workers} workers with {resource_per_worker} each")
        start = time.time()
        strategy = self.shuffle_strategy(
            files,
            batch_size,
            num_workers * thread_per_worker,
            test_size,
            val_size,
            random_seed,
            metadata_cb=self.metadata_cb,
            is_shuffled=is_shuffled,
            **strategy_kw,
        )
        indices = strategy.split()
        print(f"Data splitting time: {time.time() - start:.2f} seconds")
        missing = [k for k in self.model_keys if k not in indices.metadata]
        if missing:
            raise KeyError(
                f"model_keys {missing} are not in the metadata written by metadata_cb "
                f"(it has {sorted(indices.metadata)}); write them in metadata_cb or drop them"
            )
        config = {
            "indices": indices,
            "ckpt_path": None if ckpt_path is None else str(Path(ckpt_path).expanduser().resolve()),
            "shuffle_strategy": strategy,
            "prefetch_factor": prefetch_factor,
            "max_epochs": max_epochs,
            "threads": thread_per_worker,
            "use_gpu": is_gpu,
            "seed": random_seed,
            "ds_kwargs": ds_kw,
        }
        trainer = TorchTrainer(
            self._trainer(),
            scaling_config=scaling,
            train_loop_config=config,
            run_config=run_config(result_storage_path, None, max_failures),
        )
        print("Spawning Ray worker and initiating distributed training")
        return trainer.fit()

    def _trainer(self) -> Callable[[dict], None]:
        """The worker function (it carries the classes and callbacks, not the runner)."""
        Model, Ds, model_keys = self.Model, self.Ds, self.model_keys
        sparse_key, strategy_obj = self.sparse_key, self.ray_trainer_strategy
        before, after = self.before_dense_cb, self.after_dense_cb

        def anndata_train_func(config: dict) -> None:
            import pytorch_lightning as pl
            import ray.train
            import torch
            from ray.train.lightning import (
                RayLightningEnvironment,
                RayTrainReportCallback,
                prepare_trainer,
            )

            from stformer_train.lightning import AnnDataModule

            rank = ray.train.get_context().get_world_rank()
            threads = int(os.environ.get("OMP_NUM_THREADS", config["threads"]))
            torch.set_num_threads(max(1, threads))
            print(f"=========Starting the training on {rank} with num threads: {threads}=========")
            if config["seed"] is not None:
                pl.seed_everything(config["seed"], workers=True, verbose=False)
            indices = config["indices"]
            dm = AnnDataModule(
                indices,
                Ds,
                config["prefetch_factor"],
                sparse_key,
                config["shuffle_strategy"],
                before,
                after,
                **config["ds_kwargs"],
            )
            params = dict(indices.metadata)
            if model_keys:
                params = {k: params[k] for k in model_keys}
            model = Model(**params)
            ckpt_path = config["ckpt_path"]
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:  # a restarted attempt: resume from Ray's last checkpoint
                with checkpoint.as_directory() as folder:
                    local = (
                        Path(tempfile.mkdtemp(prefix="protoplast-resume-")) / LIGHTNING_CHECKPOINT
                    )
                    local.write_bytes((Path(folder) / LIGHTNING_CHECKPOINT).read_bytes())
                ckpt_path = str(local)
            trainer = pl.Trainer(
                max_epochs=config["max_epochs"],
                devices="auto",
                accelerator="gpu" if config["use_gpu"] else "cpu",
                strategy=strategy_obj,
                plugins=[RayLightningEnvironment()],
                callbacks=[RayTrainReportCallback()],
                enable_checkpointing=True,
                # Lightning's own logs and checkpoints stay out of the worker's cwd; what is
                # kept is what RayTrainReportCallback reports to result_storage_path
                default_root_dir=tempfile.mkdtemp(prefix="protoplast-lightning-"),
            )
            trainer = prepare_trainer(trainer)
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)

        return anndata_train_func
