"""What a corpus is tokenized with, and how the h5ad files are read: :class:`TokenizeConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from stformer_data.genes.vocab import GeneVocab
from stformer_data.tokenize.binned import BinnedTokenizer, BinnedTokenizerConfig
from stformer_data.tokenize.contract import Tokenizer
from stformer_data.tokenize.rank import RankTokenizerConfig, RankValueTokenizer
from stformer_data.tokenize.spatial import NeighborhoodConfig, NeighborhoodTokenizer

_SCHEMES = ("rank", "binned")
_MODES = ("spot", "neighborhood")
_PARALLEL = ("auto", "threads", "processes")


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """What to tokenize and how the h5ad files are read.

    Parameters
    ----------
    scheme
        ``"rank"`` (Geneformer rank-value) or ``"binned"`` (expression bins, genes in token_type_ids).
    mode
        ``"spot"`` (one cell/spot) or ``"neighborhood"`` (stFormer: spot + neighbourhood; rank only).
    gene_id_key
        ``var`` column with gene ids; ``None`` uses ``var_names``.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    obs_columns
        ``obs`` columns copied into the corpus (e.g. a cell-type label); all must exist.
    chunk_size
        Rows read per chunk; memory is bounded by it.
    rows_per_unit
        Rows per unit of work (one Arrow shard; what ``num_proc`` workers share and a rerun resumes).
    num_proc
        Parallel workers; 1 runs in this process, on one core.
    parallel
        How ``num_proc`` workers run: ``"threads"`` (in this process: the compiled rank kernel
        releases the GIL, so a chunk's rows are ranked on ``num_proc`` threads while the previous
        chunk is written), ``"processes"`` (worker processes over files and row ranges), or
        ``"auto"``: threads for ``scheme="rank", mode="spot"``, processes otherwise (with
        ``"threads"`` the other schemes and modes run in this process on one core).
    allow_non_integer
        Accept non-integer (already normalised) values instead of refusing them.
    """

    scheme: str = "rank"
    mode: str = "spot"
    gene_id_key: str | None = None
    layer: str | None = None
    obs_columns: tuple[str, ...] = ()
    chunk_size: int = 2048
    rows_per_unit: int = 32768
    num_proc: int = 1
    parallel: str = "auto"
    allow_non_integer: bool = False
    rank: RankTokenizerConfig = field(default_factory=RankTokenizerConfig)
    binned: BinnedTokenizerConfig = field(default_factory=BinnedTokenizerConfig)
    neighborhood: NeighborhoodConfig = field(default_factory=NeighborhoodConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_columns", tuple(self.obs_columns))
        if self.scheme not in _SCHEMES:
            raise ValueError(f"scheme must be one of {_SCHEMES}, got {self.scheme!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.scheme == "binned" and self.mode == "neighborhood":
            raise ValueError("mode='neighborhood' is defined for scheme='rank' only")
        if self.parallel not in _PARALLEL:
            raise ValueError(f"parallel must be one of {_PARALLEL}, got {self.parallel!r}")
        for name in ("chunk_size", "rows_per_unit", "num_proc"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def uses_threads(self) -> bool:
        """Whether ``num_proc`` workers are threads of this process (see ``parallel``)."""
        if self.parallel == "auto":
            return self.scheme == "rank" and self.mode == "spot"
        return self.parallel == "threads"

    @property
    def n_counts_key(self) -> str | None:
        return self.binned.n_counts_key if self.scheme == "binned" else self.rank.n_counts_key

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], **overrides: Any) -> TokenizeConfig:
        """Rebuild a config from its ``dataclasses.asdict`` form (a manifest's ``settings``).

        ``overrides`` win (e.g. other ``obs_columns`` when a model's settings are reused on new data).
        """
        nested = {
            "rank": RankTokenizerConfig,
            "binned": BinnedTokenizerConfig,
            "neighborhood": NeighborhoodConfig,
        }
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(
                f"TokenizeConfig: unknown setting(s) {unknown}; allowed: {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in {**settings, **overrides}.items():
            if key in nested and isinstance(value, Mapping):
                value = nested[key](
                    **{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                )
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    @property
    def token_types(self) -> bool:
        """Whether the corpus has ``token_type_ids`` (binned genes, neighbourhood halves)."""
        return self.scheme == "binned" or self.mode == "neighborhood"

    def tokenizer(
        self, vocab: GeneVocab, medians: Mapping[str, float], token_vocab: GeneVocab
    ) -> Tokenizer:
        """The tokenizer of this scheme and mode (``vocab``: the genes; ``token_vocab``: the
        vocabulary of ``input_ids``, the same as ``vocab`` for the rank scheme)."""
        if self.scheme == "binned":
            return BinnedTokenizer(vocab, token_vocab, self.binned)
        rank = RankValueTokenizer(vocab, medians, self.rank)
        if self.mode == "neighborhood":
            return NeighborhoodTokenizer(rank, self.neighborhood)
        return rank
