"""Train / validation / test splits of the cells of many files, by fraction or grouped by an obs key.

A grouped split (:func:`grouped_random_split`) puts all cells of one group (donor, sample, tissue
section) in the same split, so a model is never evaluated on a donor it was trained on. (STEP's
``category_random_split`` is the opposite, a split stratified *within* each category: it lives in
:mod:`stformer_data.stream.datasets`.)
The split is drawn from a seed and saved as ``split.json`` in the run directory; a resumed run
loads it instead of drawing again.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from stformer_data._errors import InputError
from stformer_data.atomic import atomic_write_text
from stformer_data.h5ad.open import open_h5ad

SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.json"


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {tuple(fractions)}")
    fr = tuple(float(f) for f in fractions)
    if any(f < 0 for f in fr) or not np.isclose(sum(fr), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fr}")
    return fr  # type: ignore[return-value]


def grouped_random_split(
    categories: Sequence[str] | np.ndarray, fractions: Sequence[float], seed: int = 0
) -> dict[str, list[str]]:
    """Assign whole categories to train/val/test so that cell shares approach ``fractions``.

    Categories are shuffled (by ``seed``) and taken in that order; each goes to the split whose
    share of cells is furthest below its target. A split with a non-zero fraction that is left empty
    then takes the smallest category of a split holding several.

    >>> grouped_random_split(["a"] * 8 + ["b"] * 1 + ["c"] * 1, (0.8, 0.1, 0.1), seed=0)
    {'train': ['a'], 'val': ['b'], 'test': ['c']}
    """
    fr = _check_fractions(fractions)
    values, counts = np.unique(np.asarray(categories).astype(str), return_counts=True)
    order = np.random.default_rng(seed).permutation(values.size)
    wanted = [i for i in range(3) if fr[i] > 0]
    if values.size < len(wanted):
        raise ValueError(
            f"{values.size} categories cannot fill {len(wanted)} splits with non-zero fractions"
        )
    total = counts.sum()
    got = np.zeros(3)
    split_of = np.empty(values.size, dtype=np.int64)
    for idx in order:
        deficit = [(fr[i] - got[i] / total) if i in wanted else -np.inf for i in range(3)]
        split_of[idx] = int(np.argmax(deficit))
        got[split_of[idx]] += counts[idx]
    for i in (
        wanted
    ):  # a wanted split left empty takes the smallest category of a split that has several
        if not np.any(split_of == i):
            donors = [j for j in range(values.size) if np.sum(split_of == split_of[j]) > 1]
            split_of[min(donors, key=lambda j: (counts[j], values[j]))] = i
    out = {s: [str(values[j]) for j in np.flatnonzero(split_of == i)] for i, s in enumerate(SPLITS)}
    return {s: sorted(v) for s, v in out.items()}


def _encode(codes: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(codes.astype(np.uint8).tobytes(), 6)).decode("ascii")


def _decode(text: str, n: int) -> np.ndarray:
    codes = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8).copy()
    if codes.size != n:
        raise ValueError(f"split codes hold {codes.size} cells, expected {n}")
    return codes


@dataclass(frozen=True, kw_only=True)
class CellSplit:
    """Which cell of which file is in train, val or test.

    Parameters
    ----------
    files
        The files, in the order the datasets read them.
    n_obs
        Cells per file (checked again on load, so a changed file is noticed).
    codes
        Per file, one code per cell: 0 train, 1 val, 2 test.
    fractions, group_key, seed
        How the split was drawn.
    groups
        For a grouped split, the groups of each split.

    >>> info = CellSplit.from_counts(["a.h5ad"], [10], fractions=(0.8, 0.2, 0.0), seed=1)
    >>> [len(info.indices("train")[0]), len(info.indices("val")[0]), len(info.indices("test")[0])]
    [8, 2, 0]
    """

    files: tuple[str, ...]
    n_obs: tuple[int, ...]
    codes: tuple[np.ndarray, ...]
    fractions: tuple[float, float, float]
    group_key: str | None = None
    seed: int = 0
    groups: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if not (len(self.files) == len(self.n_obs) == len(self.codes)):
            raise ValueError("files, n_obs and codes must have the same length")
        for f, n, c in zip(self.files, self.n_obs, self.codes, strict=True):
            if c.shape != (n,):
                raise ValueError(f"codes of {f} have shape {c.shape}, expected ({n},)")

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_counts(
        cls,
        files: Sequence[str | PathLike[str]],
        n_obs: Sequence[int],
        *,
        fractions: Sequence[float] = (0.9, 0.05, 0.05),
        seed: int = 0,
    ) -> CellSplit:
        """A cell-level random split: exactly ``round(fraction * N)`` cells per split (test takes the rest)."""
        fr = _check_fractions(fractions)
        n_obs = tuple(int(n) for n in n_obs)
        total = sum(n_obs)
        n_train, n_val = round(fr[0] * total), round(fr[1] * total)
        if n_train + n_val > total:
            n_val = total - n_train
        flat = np.full(total, 2, dtype=np.uint8)
        perm = np.random.default_rng(seed).permutation(total)
        flat[perm[:n_train]] = 0
        flat[perm[n_train : n_train + n_val]] = 1
        bounds = np.concatenate([[0], np.cumsum(n_obs)])
        codes = tuple(flat[bounds[i] : bounds[i + 1]] for i in range(len(n_obs)))
        return cls(
            files=tuple(str(f) for f in files), n_obs=n_obs, codes=codes, fractions=fr, seed=seed
        )

    @classmethod
    def from_groups(
        cls,
        files: Sequence[str | PathLike[str]],
        groups_per_file: Sequence[np.ndarray],
        *,
        fractions: Sequence[float] = (0.9, 0.05, 0.05),
        seed: int = 0,
        group_key: str | None = None,
    ) -> CellSplit:
        """A grouped split: every cell of a group lands in the same split (see :func:`grouped_random_split`)."""
        fr = _check_fractions(fractions)
        labels = [np.asarray(g).astype(str) for g in groups_per_file]
        assignment = grouped_random_split(
            np.concatenate(labels) if labels else np.array([]), fr, seed
        )
        code_of = {g: i for i, s in enumerate(SPLITS) for g in assignment[s]}
        codes = tuple(
            np.fromiter((code_of[g] for g in lab), dtype=np.uint8, count=lab.size) for lab in labels
        )
        return cls(
            files=tuple(str(f) for f in files),
            n_obs=tuple(lab.size for lab in labels),
            codes=codes,
            fractions=fr,
            group_key=group_key,
            seed=seed,
            groups=assignment,
        )

    @classmethod
    def create(
        cls,
        files: Sequence[str | PathLike[str]],
        *,
        fractions: Sequence[float] = (0.9, 0.05, 0.05),
        group_key: str | None = None,
        seed: int = 0,
        read_obs: Callable[[Path, str], np.ndarray] | None = None,
    ) -> CellSplit:
        """Draw a split of h5ad ``files``: by cell, or grouped by ``obs[group_key]`` when it is given."""
        paths = [Path(f) for f in files]
        if group_key is None:
            n_obs = []
            for p in paths:
                adata = open_h5ad(p)
                n_obs.append(adata.n_obs)
                adata.file.close()
            return cls.from_counts(paths, n_obs, fractions=fractions, seed=seed)
        read_obs = read_obs or _read_obs_column
        return cls.from_groups(
            paths,
            [read_obs(p, group_key) for p in paths],
            fractions=fractions,
            seed=seed,
            group_key=group_key,
        )

    # --- use ------------------------------------------------------------------------------------
    def indices(self, split: str) -> list[np.ndarray]:
        """Per file, the sorted rows in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        code = SPLITS.index(split)
        return [np.flatnonzero(c == code) for c in self.codes]

    def counts(self) -> dict[str, int]:
        return {s: int(sum(int((c == i).sum()) for c in self.codes)) for i, s in enumerate(SPLITS)}

    # --- persistence ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format_version": 1,
            "fractions": list(self.fractions),
            "group_key": self.group_key,
            "seed": self.seed,
            "groups": self.groups,
            "counts": self.counts(),
            "files": [
                {"path": f, "n_obs": n, "codes": _encode(c)}
                for f, n, c in zip(self.files, self.n_obs, self.codes, strict=True)
            ],
        }

    def save(self, run_dir: str | PathLike[str]) -> Path:
        """Write ``run_dir/split.json`` atomically (temporary file, then rename)."""
        return atomic_write_text(Path(run_dir) / SPLIT_FILE, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, run_dir: str | PathLike[str]) -> CellSplit:
        path = Path(run_dir) / SPLIT_FILE
        if not path.is_file():
            raise InputError(
                path, "split file", "does not exist", "create the split with CellSplit.create first"
            )
        try:
            payload = json.loads(path.read_text())
            files = payload["files"]
            return cls(
                files=tuple(f["path"] for f in files),
                n_obs=tuple(int(f["n_obs"]) for f in files),
                codes=tuple(_decode(f["codes"], int(f["n_obs"])) for f in files),
                fractions=tuple(payload["fractions"]),
                group_key=payload.get("group_key"),
                seed=int(payload.get("seed", 0)),
                groups=payload.get("groups"),
            )
        except (KeyError, ValueError, TypeError, zlib.error) as exc:
            raise InputError(
                path, "split file", f"is malformed ({exc})", "delete it to draw a new split"
            ) from exc

    @classmethod
    def load_or_create(
        cls,
        run_dir: str | PathLike[str],
        files: Sequence[str | PathLike[str]],
        *,
        fractions: Sequence[float] = (0.9, 0.05, 0.05),
        group_key: str | None = None,
        seed: int = 0,
    ) -> CellSplit:
        """Reuse ``run_dir/split.json`` when present (a resumed run), else draw the split and save it.

        A saved split made for other files, or for files whose cell counts changed, is refused.
        """
        path = Path(run_dir) / SPLIT_FILE
        if not path.is_file():
            info = cls.create(files, fractions=fractions, group_key=group_key, seed=seed)
            info.save(run_dir)
            return info
        info = cls.load(run_dir)
        wanted = tuple(str(Path(f)) for f in files)
        if tuple(str(Path(f)) for f in info.files) != wanted:
            raise InputError(
                path,
                "files",
                f"are {list(info.files)}, not the files of this run {list(wanted)}",
                "use a new run directory, or delete split.json to draw a new split",
            )
        for f, n in zip(info.files, info.n_obs, strict=True):
            adata = open_h5ad(f)
            now = adata.n_obs
            adata.file.close()
            if now != n:
                raise InputError(
                    f,
                    "n_obs",
                    f"is {now} but the saved split of {path} has {n} cells",
                    "the file changed since the split was drawn; use a new run directory",
                )
        return info


def _read_obs_column(path: Path, key: str) -> np.ndarray:
    adata = open_h5ad(path)
    try:
        if key not in adata.obs.columns:
            raise InputError(
                path,
                f"obs[{key!r}]",
                "does not exist",
                f"group by one of {list(adata.obs.columns)}",
            )
        return adata.obs[key].astype(str).to_numpy()
    finally:
        adata.file.close()
