"""Perturb a batch of tokenized cells and measure each perturbation's shift (no files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from stformer_train.perturb._engine import PooledEncoder, cosine, plan_batches
from stformer_train.perturb._ops import PERTURB_TYPES, perturb_tokens


@dataclass(frozen=True)
class PerturbSpec:
    """What to perturb in every cell.

    Parameters
    ----------
    perturbation
        ``"delete"``, ``"overexpress"``, ``"inhibit"`` or ``"activate"`` (see :func:`perturb_tokens`).
    genes
        ``"all"``: each gene the cell expresses, one at a time; otherwise token ids.
    combine
        With a list of genes: perturb them all together as one combination (``True``) or each
        alone (``False``).
    rank_shift
        Quartiles moved by ``inhibit`` / ``activate``.
    gene_shifts
        Also measure, per perturbation, the cosine similarity of every other gene's embedding
        before and after.
    """

    perturbation: str = "delete"
    genes: str | tuple[int, ...] = "all"
    combine: bool = False
    rank_shift: int = 1
    gene_shifts: bool = False

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURB_TYPES:
            raise ValueError(
                f"perturbation must be one of {PERTURB_TYPES}, got {self.perturbation!r}"
            )
        if isinstance(self.genes, str):
            if self.genes != "all":
                raise ValueError(f"genes must be 'all' or a list of token ids, got {self.genes!r}")
            if self.combine:
                raise ValueError("combine=True needs a list of genes, not 'all'")
        else:
            object.__setattr__(self, "genes", tuple(int(g) for g in self.genes))
            if not self.genes:
                raise ValueError("genes is an empty list")
        if self.rank_shift not in (1, 2, 3):
            raise ValueError(f"rank_shift must be 1, 2 or 3, got {self.rank_shift}")

    def targets(self) -> list[tuple[int, ...]] | None:
        """The fixed perturbations (``None`` for ``all``: each cell's own genes)."""
        if self.genes == "all":
            return None
        return [tuple(self.genes)] if self.combine else [(g,) for g in self.genes]


@dataclass
class PerturbResult:
    """Per (cell, perturbation): the cell index, the perturbed token ids, the cell's gene count and shifts."""

    cell: list[int] = field(default_factory=list)
    perturbed: list[tuple[int, ...]] = field(default_factory=list)
    n_genes: list[int] = field(default_factory=list)
    cos_sim: list[float] = field(default_factory=list)
    goal_cos_before: list[float] = field(default_factory=list)
    goal_cos_after: list[float] = field(default_factory=list)
    # gene shifts, one row per (cell, perturbation, other gene): index into the rows above
    shift_row: list[np.ndarray] = field(default_factory=list)
    shift_gene: list[np.ndarray] = field(default_factory=list)
    shift_cos: list[np.ndarray] = field(default_factory=list)


def _frame(
    tokens: np.ndarray, cls_id: int | None, eos_id: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pre = tokens[:1] if cls_id is not None and len(tokens) and tokens[0] == cls_id else tokens[:0]
    post = (
        tokens[-1:]
        if eos_id is not None and len(tokens) > len(pre) and tokens[-1] == eos_id
        else tokens[:0]
    )
    return pre, tokens[len(pre) : len(tokens) - len(post)], post


def _copies(
    genes: np.ndarray, spec: PerturbSpec, max_genes: int
) -> tuple[list[tuple[int, ...]], np.ndarray | list]:
    """The perturbations of one cell and their gene tokens (a 2-D array when all have one length)."""
    fixed = spec.targets()
    if fixed is None and spec.perturbation == "delete":
        n = len(genes)
        j = np.arange(n - 1)
        idx = j[None, :] + (j[None, :] >= np.arange(n)[:, None])
        return [(int(g),) for g in genes], genes[idx]
    targets = fixed if fixed is not None else [(int(g),) for g in genes]
    labels, rows = [], []
    for t in targets:
        out = perturb_tokens(
            genes, t, spec.perturbation, rank_shift=spec.rank_shift, max_genes=max_genes
        )
        if out is not None:
            labels.append(t)
            rows.append(out)
    return labels, rows


def perturb_batch(
    encoder: PooledEncoder,
    cells: Sequence[np.ndarray],
    spec: PerturbSpec,
    *,
    cell_ids: Sequence[int] | None = None,
    cls_id: int | None = None,
    eos_id: int | None = None,
    max_length: int = 2048,
    goal: np.ndarray | None = None,
    tokens_per_batch: int = 16384,
) -> PerturbResult:
    """Perturb each of ``cells`` (token sequences, ``<cls>``/``<eos>`` included) as ``spec`` asks.

    The cosine similarity is between the mean-pooled embedding of the cell and of its perturbed
    copy (special tokens left out of the mean). With ``goal`` (a target state's mean embedding)
    the cosine similarity of the cell to it before and after is reported too.
    """
    cell_ids = list(range(len(cells))) if cell_ids is None else list(cell_ids)
    res = PerturbResult()
    cells = [np.asarray(c, dtype=np.int64) for c in cells]
    keep = [i for i, c in enumerate(cells) if len(_frame(c, cls_id, eos_id)[1]) > 0]
    if not keep:
        return res
    # 1. the unperturbed cells: embeddings, and hidden states per gene when gene shifts are asked
    orig_emb = torch.zeros(
        (len(cells), encoder.hidden_size), dtype=torch.float32, device=encoder.device
    )
    orig_hidden: dict[int, torch.Tensor] = {}
    lengths = np.array([len(cells[i]) for i in keep])
    for b in plan_batches(lengths, tokens_per_batch):
        rows = [keep[i] for i in b]
        h, kp = encoder.hidden([cells[i] for i in rows])
        orig_emb[rows] = encoder.pool(h, kp)
        if spec.gene_shifts:
            for r, i in enumerate(rows):
                orig_hidden[i] = h[r, : len(cells[i])].float()
    goal_t = None
    if goal is not None:
        goal_t = torch.as_tensor(np.asarray(goal, dtype=np.float32), device=encoder.device)[None, :]
        before = cosine(orig_emb, goal_t).cpu().numpy()
    # 2. the perturbed copies of every cell, batched by length across cells
    copies: list[np.ndarray] = []
    owners: list[int] = []
    max_genes = max_length - int(cls_id is not None) - int(eos_id is not None)
    deletions: list[
        tuple[int, int, int]
    ] = []  # delete-all: (cell, first copy, first gene position)
    for i in keep:
        pre, genes, post = _frame(cells[i], cls_id, eos_id)
        labels, rows = _copies(genes, spec, max_genes)
        if not labels:
            continue
        if isinstance(rows, np.ndarray) and spec.perturbation == "delete":
            deletions.append((i, len(copies), len(pre)))
        if isinstance(rows, np.ndarray):
            rows = np.hstack(
                [
                    np.broadcast_to(pre, (len(rows), len(pre))),
                    rows,
                    np.broadcast_to(post, (len(rows), len(post))),
                ]
            )
            copies.extend(rows)
        else:
            copies.extend(np.concatenate([pre, r, post]) for r in rows)
        owners.extend([i] * len(labels))
        res.cell.extend([cell_ids[i]] * len(labels))
        res.perturbed.extend(labels)
        res.n_genes.extend([len(genes)] * len(labels))
    if not copies:
        return res
    cos = np.zeros(len(copies), dtype=np.float32)
    goal_after = np.zeros(len(copies), dtype=np.float32)
    lengths = np.fromiter((len(c) for c in copies), dtype=np.int64, count=len(copies))
    owner_t = np.asarray(owners)
    specials = encoder.special_ids.cpu().numpy()
    total = int(lengths.sum())
    budget = tokens_per_batch
    if encoder.workers > 1:  # units small enough for the workers to share the work evenly
        budget = min(tokens_per_batch, max(1024, -(-total // (4 * encoder.workers))))
    if deletions:  # each cell's deletion copies share their first layer's projections
        batches = []
        for i, start, offset in deletions:
            n_copies = len(_frame(cells[i], cls_id, eos_id)[1])
            step = max(1, budget // max(len(cells[i]) - 1, 1))
            for c0 in range(0, n_copies, step):
                c1 = min(n_copies, c0 + step)
                positions = np.arange(offset + c0, offset + c1)
                batches.append((np.arange(start + c0, start + c1), (i, positions)))
    else:
        batches = [(b, None) for b in plan_batches(lengths, budget)]

    def run(batch):
        b, deleted = batch
        if deleted is None:
            h, kp = encoder.hidden([copies[j] for j in b])
        else:
            h, kp = encoder.deletions(cells[deleted[0]], deleted[1])
        emb = encoder.pool(h, kp)
        c = cosine(emb, orig_emb[owner_t[b]]).cpu().numpy()
        g = cosine(emb, goal_t).cpu().numpy() if goal_t is not None else None
        shifts = None
        if spec.gene_shifts:
            shifts = _gene_shifts(
                h, b, copies, owner_t, cells, orig_hidden, specials, res.perturbed
            )
        return c, g, shifts

    order = sorted(
        range(len(batches)),
        key=lambda k: -encoder.cost(len(batches[k][0]), int(lengths[batches[k][0]].max())),
    )
    done = dict(zip(order, encoder.map(run, [batches[k] for k in order]), strict=True))
    for k, (b, _) in enumerate(batches):  # in batch order, whatever order they ran in
        c, g, shifts = done[k]
        cos[b] = c
        if g is not None:
            goal_after[b] = g
        for rows_, genes_, cos_ in shifts or ():
            res.shift_row.append(rows_)
            res.shift_gene.append(genes_)
            res.shift_cos.append(cos_)
    res.cos_sim = cos.tolist()
    if goal_t is not None:
        res.goal_cos_before = before[owner_t].tolist()
        res.goal_cos_after = goal_after.tolist()
    return res


def _gene_shifts(h, batch, copies, owners, cells, orig_hidden, special_ids, labels) -> list:
    """Cosine similarity of every unperturbed gene's embedding in the copy vs the original cell.

    One ``(row, gene, cos)`` triple of arrays per copy of ``batch`` that keeps a gene.
    """
    out = []
    for r, j in enumerate(batch):
        cell = owners[j]
        orig = cells[cell]
        copy = copies[j]
        targets = np.asarray(labels[j])
        genes = np.setdiff1d(np.intersect1d(copy, orig), np.concatenate([targets, special_ids]))
        if genes.size == 0:
            continue
        # token -> position (a gene appears once per cell; specials are not genes of the cell)
        pos_o = np.argsort(orig, kind="stable")
        po = pos_o[np.searchsorted(orig[pos_o], genes)]
        pos_c = np.argsort(copy, kind="stable")
        pc = pos_c[np.searchsorted(copy[pos_c], genes)]
        c = cosine(
            h[r, torch.as_tensor(pc, device=h.device)],
            orig_hidden[cell][torch.as_tensor(po, device=h.device)],
        )
        out.append(
            (
                np.full(genes.size, j, dtype=np.int64),
                genes.astype(np.int64),
                c.cpu().numpy().astype(np.float32),
            )
        )
    return out
