"""STEP's trainer (``step.functionality.comps.trainer``), as its document specifies it.

Port a STEP script by changing one import line::

    from stformer_train.step import EarlyStopping, Trainer, category_random_split, train_loop_formatter

The model is the user's ``torch.nn.Module`` and follows STEP's TranscriptFormer convention: it
computes its own losses and returns them as a dict of named scalar tensors.

* ``model.loss(*inputs, **kwargs) -> dict[str, Tensor]`` is called with the input tuple of a
  batch (``(x, *codes)`` of :class:`~stformer_data.BaseDataset`, or the tensor ``X``); a model
  without ``loss`` is called instead (``model(*inputs)`` must then return the dict).
* Graph training (:meth:`Trainer.train_graph_batch`, :meth:`Trainer.train_node_sampler`) passes
  the graph tuple ``(x, edge_index, *extra)`` and ``ind=`` (the node positions the loss is
  computed on, ``None`` for all) to ``model.loss``.

The total loss back-propagated is the weighted sum of the dict (weights from ``lossconfig``).
Each monitored loss has its own :class:`EarlyStopping`, fed with its validation value (its
training value without validation); training stops when **all** of them have stalled.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from stformer_data.atomic import atomic_write_bytes
from stformer_data.stream.datasets import BaseDataset, MaskedDataset, category_random_split

__all__ = [
    "BaseDataset",
    "EarlyStopping",
    "MaskedDataset",
    "Trainer",
    "category_random_split",
    "train_loop_formatter",
]


class EarlyStopping:
    """Early stops the training if validation loss doesn't improve after a given patience.

    Call it with each validation loss: ``es(val_loss, model)``. An improvement (lower than the
    best by more than ``delta``) saves ``model.state_dict()`` to the file ``path`` (``torch.save``;
    ``path=None`` saves nothing) and resets ``counter``; otherwise ``counter`` grows and
    ``early_stop`` is set once it reaches ``patience``. A later improvement clears ``early_stop``
    again, so several stoppers (one per loss) tell at each epoch whether their loss still improves.

    Parameters
    ----------
    patience
        How long to wait after last time validation loss improved.
    verbose
        If True, reports each validation loss improvement through ``trace_func``.
    delta
        Minimum change in the monitored quantity to qualify as an improvement.
    path
        File the best model's state dict is saved to.
    trace_func
        Function the messages go to.

    >>> es = EarlyStopping(patience=2, path=None)
    >>> for loss in (1.0, 0.9, 0.95, 0.97):
    ...     es(loss, None)
    >>> es.counter, es.early_stop, es.val_loss_min
    (2, True, 0.9)
    """

    def __init__(
        self,
        patience: int = 7,
        verbose: bool = False,
        delta: float = 0,
        path: str | None = "checkpoint.pt",
        trace_func: Callable[..., Any] = print,
    ):
        if int(patience) < 1:
            raise ValueError(f"EarlyStopping patience must be >= 1, got {patience}")
        if delta < 0:
            raise ValueError(f"EarlyStopping delta must be >= 0, got {delta}")
        self.patience = int(patience)
        self.verbose = bool(verbose)
        self.delta = float(delta)
        self.path = path
        self.trace_func = trace_func
        self.counter = 0
        self.best_score: float | None = None
        self.early_stop = False
        self.val_loss_min = math.inf

    def __call__(self, val_loss: float, model: torch.nn.Module | None) -> None:
        val_loss = float(val_loss)
        if math.isnan(val_loss):
            raise ValueError("EarlyStopping got a NaN validation loss")
        score = -val_loss
        if self.best_score is None or score > self.best_score + self.delta:
            self.best_score = score
            self.save_checkpoint(val_loss, model)
            self.counter = 0
            self.early_stop = False
            return
        self.counter += 1
        if self.verbose:
            self.trace_func(f"EarlyStopping counter: {self.counter} out of {self.patience}")
        if self.counter >= self.patience:
            self.early_stop = True

    def save_checkpoint(self, val_loss: float, model: torch.nn.Module | None) -> None:
        """Save the model's state dict to ``path`` (atomically) when validation loss decreases."""
        if self.verbose:
            self.trace_func(
                f"Validation loss decreased ({self.val_loss_min:.6f} --> {val_loss:.6f}).  Saving model ..."
            )
        if model is not None and self.path is not None:
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            atomic_write_bytes(self.path, buffer.getvalue())
        self.val_loss_min = val_loss


#: every key of a loss's config (``Trainer.lossconfig[name]``)
_LOSS_KEYS = ("weight", "patience", "delta", "verbose", "path", "early_stop", "start_epoch")


def _check_keys(given: Iterable[str], allowed: Iterable[str], what: str) -> None:
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; allowed: {allowed}"
            raise TypeError(f"{what} got an unknown key {key!r}{hint}")


def _as_float(value: Any) -> float:
    return float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)


def train_loop_formatter(train_func: Callable) -> Callable:
    """A decorator function that formats the training loop.

    The decorated method (``train_func(self, state, ...)`` of a :class:`Trainer`) gets a ``state``
    completed with the defaults (``n_epochs=100``, ``batch_size=1024``, ``epoch=0``,
    ``history=[]``, ``log_every=1``, ``trace_func=print``), the model in training mode and an
    optimizer (``init_optimizer()`` if none was set); afterwards the model is put in evaluation
    mode, and the last epoch's line and the wall time go to ``state["trace_func"]``.
    ``state["stopped_early"]`` tells whether the loop ended by early stopping.
    """

    @functools.wraps(train_func)
    def wrapper(self: Trainer, state: dict | None = None, *args: Any, **kwargs: Any) -> Any:
        state = {} if state is None else state
        for key, value in (
            ("n_epochs", 100),
            ("batch_size", 1024),
            ("epoch", 0),
            ("log_every", 1),
            ("trace_func", print),
        ):
            state.setdefault(key, value)
        state.setdefault("history", [])
        if self.optimizer is None:
            self.init_optimizer()
        self.mode_switch_to_train()
        start = time.perf_counter()
        try:
            stopped = train_func(self, state, *args, **kwargs)
        finally:
            self.model.eval()
        state["stopped_early"] = bool(stopped)
        if state["history"]:
            last = state["history"][-1]
            state["trace_func"](
                f"{'early stopped' if stopped else 'finished'} after {last['epoch'] + 1} epochs "
                f"in {time.perf_counter() - start:.1f}s: {self.format_loss_dict(last['train'], state, last.get('valid'), True)}"
            )
        return stopped

    return wrapper


class Trainer:
    """The Trainer class is responsible for training the TranscriptFormer model.

    Attributes
    ----------
    model
        The model being trained (see the module docstring for what it must provide).
    optimizer
        ``torch.optim.Adam`` (:meth:`init_optimizer`).
    lr_scheduler
        ``torch.optim.lr_scheduler.MultiStepLR`` by default (:meth:`set_lr_scheduler`), stepped
        once per epoch.
    early_stopping
        One :class:`EarlyStopping` per monitored loss name (:meth:`setup_early_stopping`).
    lossconfig
        Per loss name, overrides of :attr:`defualt_lcfg`: ``weight`` (in the total loss),
        ``patience``, ``delta``, ``verbose``, ``path`` (the early stopping checkpoint, ``None``:
        none), ``early_stop`` (monitor this loss), ``start_epoch`` (the loss counts from this epoch).
    defualt_lcfg
        The default configuration of a loss (STEP's spelling).

    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.lin = torch.nn.Linear(3, 3)
    ...     def loss(self, x):
    ...         return {"recon": ((self.lin(x) - x) ** 2).mean()}
    >>> trainer = Trainer(M())
    >>> stopped = trainer.train({"n_epochs": 3, "batch_size": 8, "trace_func": lambda *a: None},
    ...                         torch.randn(40, 3))
    >>> len(trainer.history), sorted(trainer.history[-1]["valid"])
    (3, ['val_recon'])
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.early_stopping: dict[str, EarlyStopping] = {}
        self.defualt_lcfg: dict[str, Any] = {
            "weight": 1.0,
            "patience": 7,
            "delta": 0.0,
            "verbose": False,
            "path": None,
            "early_stop": True,
            "start_epoch": 0,
        }
        self.lossconfig: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []

    # --- set-up -------------------------------------------------------------------------------
    def mode_switch_to_train(self) -> None:
        """Put the model in training mode."""
        self.model.train()

    def init_optimizer(
        self,
        lr: float = 0.001,
        tune_lr: float = 0.0001,
        stage: int = 1,
        tune_batch_embedding: bool = True,
    ) -> torch.optim.Adam:
        """Initializes the Adam optimizer for model parameter updates.

        Stage 1 trains every parameter at ``lr``. Stage 2 (fine-tuning) trains the base model at
        ``tune_lr`` and the batch-embedding parameters (names containing ``batch_embedding``) at
        ``lr``, or freezes them when ``tune_batch_embedding`` is False.
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (pretraining) or 2 (fine-tuning), got {stage}")
        if stage == 1:
            groups: list[dict[str, Any]] = [
                {"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}
            ]
        else:
            base, batch = [], []
            for name, p in self.model.named_parameters():
                (batch if "batch_embedding" in name else base).append(p)
            for p in batch:
                p.requires_grad_(tune_batch_embedding)
            groups = [{"params": base, "lr": tune_lr}]
            if tune_batch_embedding and batch:
                groups.append({"params": batch, "lr": lr})
        self.optimizer = torch.optim.Adam(groups, lr=lr)
        self.lr_scheduler = None
        return self.optimizer

    def set_lr_scheduler(self, lr_scheduler: Any = None, gamma: float = 0.1, *milestones: int):
        """Sets the learning rate scheduler (default ``MultiStepLR(optimizer, milestones, gamma)``).

        Without ``milestones`` the default scheduler keeps the rate constant.
        """
        if self.optimizer is None:
            self.init_optimizer()
        if lr_scheduler is None:
            lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=sorted(int(m) for m in milestones), gamma=gamma
            )
        self.lr_scheduler = lr_scheduler
        return lr_scheduler

    def _lcfg(self, name: str) -> dict[str, Any]:
        cfg = dict(self.defualt_lcfg)
        override = self.lossconfig.get(name, {})
        _check_keys(override, _LOSS_KEYS, f"lossconfig[{name!r}]")
        cfg.update(override)
        return cfg

    # --- one step -----------------------------------------------------------------------------
    def update_model_params(self, loss_dict: Mapping[str, torch.Tensor], epoch: int) -> float:
        """Back-propagate the weighted sum of the losses active at ``epoch`` and step the optimizer.

        Returns the total loss.
        """
        if self.optimizer is None:
            self.init_optimizer()
        total = None
        for name, value in loss_dict.items():
            cfg = self._lcfg(name)
            if epoch < cfg["start_epoch"] or not torch.is_tensor(value) or not value.requires_grad:
                continue
            term = cfg["weight"] * value.mean()
            total = term if total is None else total + term
        if total is None:
            raise ValueError(
                f"no loss to back-propagate at epoch {epoch}: the model returned {list(loss_dict)} "
                "without gradients (or every loss has a later start_epoch)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return float(total.detach())

    def setup_early_stopping(self, loss_dict: Mapping[str, Any]) -> dict[str, EarlyStopping]:
        """Sets up one :class:`EarlyStopping` for each monitored loss of ``loss_dict``."""
        self.early_stopping = {}
        for name in loss_dict:
            cfg = self._lcfg(name)
            if cfg["early_stop"]:
                self.early_stopping[name] = EarlyStopping(
                    patience=cfg["patience"],
                    verbose=cfg["verbose"],
                    delta=cfg["delta"],
                    path=cfg["path"],
                    trace_func=self._trace,
                )
        return self.early_stopping

    _trace: Callable[..., Any] = staticmethod(print)

    def cum_loss(
        self,
        loss_dict: dict,
        total_loss_dict: dict,
        use_earlystop: bool = False,
        n_batch: int = -1,
        n_epoch: int = -1,
    ) -> dict:
        """Computes the cumulative loss.

        Adds the (float) values of ``loss_dict`` to ``total_loss_dict``. With ``n_batch > 0``
        (the epoch's last call) the totals become means over the ``n_batch`` batches; with
        ``use_earlystop`` too, each mean feeds its loss's :class:`EarlyStopping` (``n_epoch`` is
        the epoch number, for the messages).
        """
        for name, value in loss_dict.items():
            total_loss_dict[name] = total_loss_dict.get(name, 0.0) + _as_float(value)
        if n_batch > 0:
            for name in total_loss_dict:
                total_loss_dict[name] /= n_batch
            if use_earlystop:
                if not self.early_stopping:
                    self.setup_early_stopping(total_loss_dict)
                for name, es in self.early_stopping.items():
                    key = name if name in total_loss_dict else f"val_{name}"
                    if key in total_loss_dict:
                        es(total_loss_dict[key], self.model)
        return total_loss_dict

    def check_early_stop(self, total_loss_dict: dict) -> bool:
        """True when every monitored loss of ``total_loss_dict`` has stalled (all ``early_stop``)."""
        monitored = [
            es
            for name, es in self.early_stopping.items()
            if name in total_loss_dict or f"val_{name}" in total_loss_dict
        ]
        return bool(monitored) and all(es.early_stop for es in monitored)

    def format_loss_dict(
        self,
        loss_dict: dict,
        state: dict,
        valid_loss_dict: dict | None = None,
        endepoch: bool = False,
    ) -> str:
        """Formats the loss dictionary for display: ``epoch 3/10 | recon 0.1234 | val_recon 0.2``."""
        parts = [f"epoch {state.get('epoch', 0) + 1}/{state.get('n_epochs', '?')}"]
        parts += [f"{k} {_as_float(v):.4f}" for k, v in loss_dict.items()]
        for k, v in (valid_loss_dict or {}).items():
            parts.append(f"{k if k.startswith('val_') else 'val_' + k} {_as_float(v):.4f}")
        if endepoch and self.early_stopping:
            parts.append(
                "patience "
                + ",".join(
                    f"{n}:{es.counter}/{es.patience}" for n, es in self.early_stopping.items()
                )
            )
        return " | ".join(parts)

    def split_X(self, X, split_rate: float):
        """Splits ``X`` into training and validation rows at random (``split_rate`` validation)."""
        if not 0 <= split_rate < 1:
            raise ValueError(f"split_rate must be in [0, 1), got {split_rate}")
        n = len(X)
        order = torch.randperm(n)
        n_valid = int(round(n * split_rate))
        valid, train = order[:n_valid], order[n_valid:]
        return X[train], X[valid]

    # --- losses of a batch --------------------------------------------------------------------
    def _loss_fn(self, call_func: Callable | None) -> Callable:
        if call_func is not None:
            return call_func
        return getattr(self.model, "loss", self.model)

    @staticmethod
    def _device_of(model: torch.nn.Module) -> torch.device:
        p = next(iter(model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def _to_device(self, value: Any) -> Any:
        if torch.is_tensor(value):
            return value.to(self._device_of(self.model))
        return value

    def _check_losses(self, out: Any) -> dict:
        if not isinstance(out, Mapping):
            raise TypeError(
                "the model's loss must return a dict of named losses (STEP's convention), got "
                f"{type(out).__name__}"
            )
        return dict(out)

    def handle_input_tuple(self, input_tuple, call_func: Callable | None = None, **kwargs) -> dict:
        """Handles the input tuple and calculates the loss: ``model.loss(*input_tuple)``."""
        if not isinstance(input_tuple, (tuple, list)):
            input_tuple = (input_tuple,)
        inputs = [self._to_device(v) for v in input_tuple]
        return self._check_losses(self._loss_fn(call_func)(*inputs, **kwargs))

    def handle_ginput_tuple(self, input_tuple, ind=None, step: int | None = None) -> dict:
        """The losses of a graph batch ``(x, edge_index, *extra)`` on the nodes ``ind``.

        With ``step`` (the epoch) the losses are also back-propagated (:meth:`update_model_params`);
        ``step=None`` only evaluates.
        """
        inputs = [self._to_device(v) for v in input_tuple]
        ind = self._to_device(torch.as_tensor(ind)) if ind is not None else None
        losses = self._check_losses(self._loss_fn(None)(*inputs, ind=ind))
        if step is not None:
            self.update_model_params(losses, step)
        return losses

    # --- loops --------------------------------------------------------------------------------
    def _end_epoch(self, state: dict, train_losses: dict, valid_losses: dict | None) -> bool:
        epoch = state["epoch"]
        monitored = valid_losses if valid_losses else train_losses
        plain = {k.removeprefix("val_"): v for k, v in monitored.items()}
        if not self.early_stopping:
            self.setup_early_stopping(plain)
        for name, es in self.early_stopping.items():
            if name in plain:
                es(plain[name], self.model)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        record = {"epoch": epoch, "train": dict(train_losses)}
        if valid_losses:
            record["valid"] = dict(valid_losses)
        state["history"].append(record)
        self.history = state["history"]
        if (epoch + 1) % max(1, int(state["log_every"])) == 0:
            state["trace_func"](self.format_loss_dict(train_losses, state, valid_losses, True))
        return self.check_early_stop(plain)

    def _epochs(self, state: dict):
        first = state["epoch"]
        for epoch in range(first, int(state["n_epochs"])):
            state["epoch"] = epoch
            yield epoch

    @train_loop_formatter
    def train_batch(self, state: dict, loaders, call_func: Callable | None = None) -> bool:
        """Trains the model on batches of ``loaders = (train_loader, valid_loader)``.

        ``valid_loader`` may be ``None``; early stopping then watches the training losses.
        Returns whether training stopped early.
        """
        train_loader, valid_loader = (
            loaders if isinstance(loaders, (tuple, list)) else (loaders, None)
        )
        self._trace = state["trace_func"]
        for epoch in self._epochs(state):
            self.mode_switch_to_train()
            totals: dict[str, float] = {}
            n_batch = 0
            for input_tuple in train_loader:
                losses = self.handle_input_tuple(input_tuple, call_func)
                self.update_model_params(losses, epoch)
                self.cum_loss(losses, totals)
                n_batch += 1
            if n_batch == 0:
                raise ValueError("the training loader yielded no batch")
            self.cum_loss({}, totals, n_batch=n_batch, n_epoch=epoch)
            valid = self.validate_loader(valid_loader, call_func) if valid_loader else None
            if self._end_epoch(state, totals, valid):
                return True
        return False

    @train_loop_formatter
    def train(
        self,
        state: dict,
        X,
        train_ind=None,
        valid_ind=None,
        call_func: Callable | None = None,
        **kwargs: Any,
    ) -> bool:
        """Train the model on the tensor ``X`` (rows are cells), in batches of ``state["batch_size"]``.

        Without indices the rows are split with :meth:`split_X` at ``state.get("split_rate", 0.2)``;
        ``kwargs`` go to the loss function. Returns True when early stopping ended the loop.
        """
        X = torch.as_tensor(X)
        if train_ind is None and valid_ind is None:
            n = len(X)
            order = torch.randperm(n)
            n_valid = int(round(n * float(state.get("split_rate", 0.2))))
            valid_ind, train_ind = order[:n_valid], order[n_valid:]
        train_ind = torch.as_tensor(
            train_ind if train_ind is not None else np.arange(len(X)), dtype=torch.long
        )
        self._trace = state["trace_func"]
        batch_size = int(state["batch_size"])
        for epoch in self._epochs(state):
            self.mode_switch_to_train()
            totals: dict[str, float] = {}
            order = train_ind[torch.randperm(train_ind.numel())]
            n_batch = 0
            for start in range(0, order.numel(), batch_size):
                losses = self.handle_input_tuple(
                    (X[order[start : start + batch_size]],), call_func, **kwargs
                )
                self.update_model_params(losses, epoch)
                self.cum_loss(losses, totals)
                n_batch += 1
            self.cum_loss({}, totals, n_batch=max(n_batch, 1), n_epoch=epoch)
            valid = (
                self.validate_X(X, valid_ind, call_func, **kwargs)
                if valid_ind is not None and len(valid_ind)
                else None
            )
            if self._end_epoch(state, totals, valid):
                return True
        return False

    @train_loop_formatter
    def train_node_sampler(
        self, state: dict, gloader, dataset, train_ind=None, valid_ind=None
    ) -> bool:
        """Trains the model on sampled sub-graphs.

        Each batch of ``gloader`` is a graph tuple ``(x, edge_index, *extra, n_id)`` whose last
        element holds the global ids of its nodes (as PyG's ``NeighborLoader`` gives them); the
        loss counts the batch nodes that are in ``train_ind`` (all when ``None``). Validation runs
        on the full graph ``dataset`` (a graph tuple) at the nodes ``valid_ind``.
        """
        self._trace = state["trace_func"]
        train_set = None if train_ind is None else torch.as_tensor(train_ind, dtype=torch.long)
        for epoch in self._epochs(state):
            self.mode_switch_to_train()
            totals: dict[str, float] = {}
            n_batch = 0
            for batch in gloader:
                *graph, n_id = batch
                n_id = torch.as_tensor(n_id)
                ind = (
                    None
                    if train_set is None
                    else torch.nonzero(torch.isin(n_id, train_set)).flatten()
                )
                if ind is not None and ind.numel() == 0:
                    continue
                self.cum_loss(self.handle_ginput_tuple(graph, ind, epoch), totals)
                n_batch += 1
            self.cum_loss({}, totals, n_batch=max(n_batch, 1), n_epoch=epoch)
            valid = None
            if valid_ind is not None:
                valid = self._validate_graph(dataset, valid_ind)
            if self._end_epoch(state, totals, valid):
                return True
        return False

    @train_loop_formatter
    def train_graph_batch(self, state: dict, gloader, train_ind=None, valid_ind=None) -> bool:
        """Trains the model on graph inputs: each batch of ``gloader`` is ``(x, edge_index, *extra)``.

        The loss is computed at the nodes ``train_ind`` and validated at ``valid_ind`` of the same
        graphs. Returns True when early stopping ended the loop.
        """
        self._trace = state["trace_func"]
        for epoch in self._epochs(state):
            self.mode_switch_to_train()
            totals: dict[str, float] = {}
            n_batch = 0
            for batch in gloader:
                self.cum_loss(self.handle_ginput_tuple(batch, train_ind, epoch), totals)
                n_batch += 1
            self.cum_loss({}, totals, n_batch=max(n_batch, 1), n_epoch=epoch)
            valid = self.validate_gloader(gloader, valid_ind) if valid_ind is not None else None
            if self._end_epoch(state, totals, valid):
                return True
        return False

    # --- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate_loader(self, loader, call_func: Callable | None = None) -> dict:
        """Mean losses over ``loader``, keyed ``val_{name}``."""
        was_training = self.model.training
        self.model.eval()
        totals: dict[str, float] = {}
        n = 0
        for input_tuple in loader:
            self.cum_loss(self.handle_input_tuple(input_tuple, call_func), totals)
            n += 1
        self.model.train(was_training)
        if n == 0:
            return {}
        return {f"val_{k}": v / n for k, v in totals.items()}

    @torch.no_grad()
    def validate_X(self, X, ind=None, call_func: Callable | None = None, **kwargs) -> dict:
        """Losses of the rows ``ind`` of ``X`` (all rows when ``None``), keyed ``val_{name}``."""
        was_training = self.model.training
        self.model.eval()
        X = torch.as_tensor(X)
        rows = X if ind is None else X[torch.as_tensor(ind, dtype=torch.long)]
        losses = self.handle_input_tuple((rows,), call_func, **kwargs)
        self.model.train(was_training)
        return {f"val_{k}": _as_float(v) for k, v in losses.items()}

    @torch.no_grad()
    def _validate_graph(self, graph, ind) -> dict:
        was_training = self.model.training
        self.model.eval()
        losses = self.handle_ginput_tuple(graph, ind, None)
        self.model.train(was_training)
        return {f"val_{k}": _as_float(v) for k, v in losses.items()}

    @torch.no_grad()
    def validate_gloader(self, gloader, ind=None) -> dict:
        """Mean losses over the graph batches of ``gloader`` (at the nodes ``ind``), keyed ``val_{name}``."""
        was_training = self.model.training
        self.model.eval()
        totals: dict[str, float] = {}
        n = 0
        for batch in gloader:
            self.cum_loss(self.handle_ginput_tuple(batch, ind, None), totals)
            n += 1
        self.model.train(was_training)
        return {f"val_{k}": v / max(n, 1) for k, v in totals.items()}

    @staticmethod
    def make_loaders(
        dataset: BaseDataset | MaskedDataset,
        batch_size: int,
        split_rate: float = 0.2,
        shuffle: bool = True,
        obs_key: str | None = None,
        **kwargs: Any,
    ) -> tuple[DataLoader, DataLoader]:
        """Training and validation ``DataLoader``\\ s of ``dataset`` (:func:`category_random_split`).

        ``kwargs`` go to both ``DataLoader``\\ s (``num_workers``, ``collate_fn``, ...); the
        validation loader is never shuffled.
        """
        train, valid = category_random_split(dataset, split_rate=split_rate, obs_key=obs_key)
        return (
            DataLoader(train, batch_size=batch_size, shuffle=shuffle, **kwargs),
            DataLoader(valid, batch_size=batch_size, shuffle=False, **kwargs),
        )
