"""Gene vocabularies (token dictionaries) in Geneformer's format, saved as JSON or pickle."""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stformer_data._errors import InputError
from stformer_data.atomic import atomic_write_bytes

PAD = "<pad>"
MASK = "<mask>"
CLS = "<cls>"
EOS = "<eos>"


class GeneVocab(Mapping[str, int]):
    """A token dictionary: special tokens first, then one token per gene id.

    It is a read-only mapping ``token -> id`` (the layout of Geneformer's ``token_dictionary.pkl``:
    ``<pad>`` = 0, ``<mask>`` = 1, then Ensembl ids) and satisfies ``stformer_collate.TokenSpec``.

    Parameters
    ----------
    token_to_id
        The mapping. Ids must be exactly ``0 .. len-1``; ``<pad>`` and ``<mask>`` must be present.
    special_tokens
        Which tokens are special (never genes). Defaults to the ``<...>`` tokens present.

    >>> vocab = GeneVocab.from_genes(["ENSG01", "ENSG02"])
    >>> vocab["ENSG02"], vocab.pad_id, vocab.mask_id, len(vocab)
    (3, 0, 1, 4)
    """

    def __init__(self, token_to_id: Mapping[str, int], special_tokens: Iterable[str] | None = None):
        mapping = {str(k): int(v) for k, v in token_to_id.items()}
        for required in (PAD, MASK):
            if required not in mapping:
                raise InputError(
                    None,
                    f"token dictionary entry {required!r}",
                    "is missing",
                    f"add {required!r} (Geneformer uses <pad>=0, <mask>=1)",
                )
        ids = sorted(mapping.values())
        if ids != list(range(len(ids))):
            raise InputError(
                None,
                "token dictionary ids",
                "are not exactly 0..N-1 without gaps or repeats",
                "renumber the tokens contiguously",
            )
        self._token_to_id = mapping
        self._id_to_token = {v: k for k, v in mapping.items()}
        if special_tokens is None:
            special_tokens = [t for t in mapping if t.startswith("<") and t.endswith(">")]
        self._special = tuple(t for t in special_tokens if t in mapping)
        self._hash: str | None = None

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_genes(
        cls, genes: Iterable[str], *, cls_token: bool = False, eos_token: bool = False
    ) -> GeneVocab:
        """Build a vocabulary from gene ids, in the order given (duplicates dropped)."""
        specials = [PAD, MASK] + ([CLS] if cls_token else []) + ([EOS] if eos_token else [])
        mapping = {t: i for i, t in enumerate(specials)}
        for g in genes:
            g = str(g)
            if g not in mapping:
                mapping[g] = len(mapping)
        return cls(mapping, specials)

    @classmethod
    def from_files(
        cls,
        files: Iterable[str | PathLike[str]],
        *,
        gene_id_key: str | None = None,
        name_to_id: Mapping[str, str] | None = None,
        cls_token: bool = False,
        eos_token: bool = False,
    ) -> GeneVocab:
        """Build a vocabulary from the gene ids of h5ad files (first appearance order; blanks dropped).

        Only the ``var`` table of each file is read.
        """
        from stformer_data.genes.mapping import resolve_gene_ids
        from stformer_data.h5ad.open import open_h5ad

        genes: dict[str, None] = {}
        for f in files:
            adata = open_h5ad(f, lazy=True)
            try:
                ids = resolve_gene_ids(
                    adata.var, gene_id_key=gene_id_key, name_to_id=name_to_id, path=f
                )
            finally:
                adata.file.close()
            genes.update((g, None) for g in ids if g and g.lower() not in ("nan", "none"))
        if not genes:
            raise InputError(
                None,
                "var gene ids",
                "are all blank in the given files",
                "choose the right --gene-id-key",
            )
        return cls.from_genes(genes, cls_token=cls_token, eos_token=eos_token)

    def with_special_tokens(self, *, cls_token: bool = False, eos_token: bool = False) -> GeneVocab:
        """A copy with ``<cls>`` / ``<eos>`` appended (ids after the existing tokens) when missing.

        Existing ids are unchanged, so a Geneformer vocabulary stays compatible with its models.
        """
        mapping = dict(self._token_to_id)
        specials = list(self._special)
        for wanted, token in ((cls_token, CLS), (eos_token, EOS)):
            if wanted and token not in mapping:
                mapping[token] = len(mapping)
                specials.append(token)
        return GeneVocab(mapping, specials)

    @classmethod
    def load(
        cls, path: str | PathLike[str], *, allow_pickle: bool | Literal["plain"] = False
    ) -> GeneVocab:
        """Load a vocabulary from ``.json`` or, with ``allow_pickle``, Geneformer's ``.pkl``.

        Unpickling runs code stored in the file: only load pickles you trust. JSON is the safe default
        (convert once with ``GeneVocab.load(pkl, allow_pickle=True).save_json(path)``).
        ``allow_pickle="plain"`` reads a pickle of plain data only and runs nothing from it
        (:func:`stformer_data.genes.plain_pickle.load_plain_pickle`).
        """
        path = Path(path)
        if not path.exists():
            raise InputError(
                path,
                "token dictionary",
                "does not exist",
                "pass the path of a .json or .pkl vocabulary",
            )
        if path.suffix == ".json":
            try:
                payload = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(
                    path, "token dictionary", f"is not valid JSON ({exc})", "re-export it"
                ) from exc
            specials = None
            if isinstance(payload, dict) and "token_to_id" in payload:
                payload, specials = payload["token_to_id"], payload.get("special_tokens")
            return cls._checked(path, payload, specials)
        if path.suffix in (".pkl", ".pickle"):
            if not allow_pickle:
                raise InputError(
                    path,
                    "token dictionary",
                    "is a pickle, and loading a pickle runs code from the file",
                    "convert it to JSON, or pass allow_pickle=True (--allow-pickle) if you trust it",
                )
            if allow_pickle == "plain":
                from stformer_data.genes.plain_pickle import load_plain_pickle

                return cls._checked(path, load_plain_pickle(path, "token dictionary"), None)
            with path.open("rb") as fh:
                return cls._checked(path, pickle.load(fh), None)
        raise InputError(
            path, "token dictionary", f"has an unknown suffix {path.suffix!r}", "use .json or .pkl"
        )

    @classmethod
    def _checked(cls, path: Path, payload: Any, specials: Any) -> GeneVocab:
        """``cls(payload, specials)`` after checking ``payload`` is a token -> integer id object;
        every problem is an InputError naming ``path``."""
        fix = 'write it as {"<pad>": 0, "<mask>": 1, "ENSG...": 2, ...} (ids 0..N-1, each once)'
        if not isinstance(payload, Mapping):
            kind = "JSON list" if isinstance(payload, list) else type(payload).__name__
            raise InputError(
                path, "token dictionary", f"is a {kind}, not an object of token -> id", fix
            )
        if specials is not None and not (
            isinstance(specials, list) and all(isinstance(t, str) for t in specials)
        ):
            raise InputError(
                path, "token dictionary special_tokens", "is not a list of token strings", fix
            )
        owner: dict[int, str] = {}
        for token, tid in payload.items():
            if isinstance(tid, bool) or not isinstance(tid, (int, np.integer)):
                raise InputError(
                    path, "token dictionary", f"entry {token!r} has id {tid!r}, not an integer", fix
                )
            if tid < 0:
                raise InputError(
                    path, "token dictionary", f"entry {token!r} has id {tid}, a negative id", fix
                )
            if int(tid) in owner:
                raise InputError(
                    path,
                    "token dictionary",
                    f"id {tid} is used by {owner[int(tid)]!r} and {token!r}",
                    fix,
                )
            owner[int(tid)] = str(token)
        try:
            return cls(payload, specials)
        except InputError as exc:
            raise InputError(path, exc.field, exc.problem, exc.fix) from exc

    # --- persistence ----------------------------------------------------------------------------
    def save_json(self, path: str | PathLike[str]) -> Path:
        path = Path(path)
        payload = {"special_tokens": list(self._special), "token_to_id": self._token_to_id}
        atomic_write_bytes(path, json.dumps(payload).encode())  # C encoder: no indent
        return path

    def save_pickle(self, path: str | PathLike[str]) -> Path:
        """Write a plain ``dict`` pickle, the format stFormer and Geneformer read."""
        path = Path(path)
        atomic_write_bytes(path, pickle.dumps(dict(self._token_to_id), protocol=4))
        return path

    # --- mapping + TokenSpec ----------------------------------------------------------------------
    def lookup(self, tokens: Iterable[str], default: int = -1) -> np.ndarray:
        """The ids of many tokens at once (int64; ``default`` for unknown ones)."""
        tokens = tokens.tolist() if isinstance(tokens, np.ndarray) else list(tokens)
        ids = map(self._token_to_id.get, tokens, itertools.repeat(default))
        return np.fromiter(ids, dtype=np.int64, count=len(tokens))

    def get(self, token: str, default: int | None = None) -> int | None:
        return self._token_to_id.get(token, default)  # faster than Mapping.get's try/except

    def __getitem__(self, token: str) -> int:
        return self._token_to_id[token]

    def __iter__(self):
        return iter(self._token_to_id)

    def __len__(self) -> int:
        return len(self._token_to_id)

    def __repr__(self) -> str:
        return f"GeneVocab({len(self)} tokens, specials={list(self._special)})"

    @property
    def pad_id(self) -> int:
        return self._token_to_id[PAD]

    @property
    def mask_id(self) -> int:
        return self._token_to_id[MASK]

    @property
    def cls_id(self) -> int | None:
        return self._token_to_id.get(CLS)

    @property
    def eos_id(self) -> int | None:
        return self._token_to_id.get(EOS)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return self._special

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._token_to_id[t] for t in self._special)

    @property
    def genes(self) -> list[str]:
        """Gene ids in token order (specials excluded)."""
        special = set(self._special)
        return [
            t
            for t, _ in sorted(self._token_to_id.items(), key=lambda kv: kv[1])
            if t not in special
        ]

    def id_to_token(self, token_id: int) -> str | None:
        return self._id_to_token.get(int(token_id))

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the mapping: equal vocabularies hash equal."""
        if self._hash is None:  # the mapping never changes after construction
            canon = json.dumps(
                sorted(self._token_to_id.items(), key=lambda kv: kv[1]), separators=(",", ":")
            )
            self._hash = hashlib.sha256(canon.encode()).hexdigest()
        return self._hash


def load_geneformer_dictionaries(
    directory: str | PathLike[str],
    *,
    allow_pickle: bool = False,
) -> tuple[GeneVocab, dict[str, float], dict[str, str]]:
    """Geneformer's ``token_dictionary.pkl``, ``gene_median_dictionary.pkl``, ``gene_name_id_dict.pkl``.

    Returns ``(vocab, medians, name_to_id)``. These are pickles: loading them runs code stored in
    the files, so ``allow_pickle=True`` is required; save them as JSON afterwards and use those.
    """
    from stformer_data.genes.mapping import load_name_to_id
    from stformer_data.genes.medians import load_medians

    d = Path(directory)
    vocab = GeneVocab.load(d / "token_dictionary.pkl", allow_pickle=allow_pickle)
    medians = load_medians(d / "gene_median_dictionary.pkl", allow_pickle=allow_pickle)
    name_to_id = load_name_to_id(d / "gene_name_id_dict.pkl", allow_pickle=allow_pickle)
    return vocab, medians, name_to_id
