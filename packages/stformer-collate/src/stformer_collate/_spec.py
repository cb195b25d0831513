"""The few facts about a vocabulary that a collator needs, as a structural type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class TokenSpec(Protocol):
    """What a collator needs to know about a vocabulary.

    ``stformer_data.GeneVocab`` satisfies this protocol, but collate does not import it:
    any object with these attributes works.
    """

    @property
    def pad_id(self) -> int: ...

    @property
    def mask_id(self) -> int: ...

    @property
    def special_ids(self) -> frozenset[int]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class SimpleTokenSpec:
    """A plain :class:`TokenSpec` for tests and for vocabularies held elsewhere.

    >>> spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=100)
    >>> sorted(spec.special_ids)
    [0, 1]
    """

    pad_id: int
    mask_id: int
    vocab_size: int
    extra_special_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.vocab_size <= 0:
            raise ValueError(f"vocab_size must be > 0, got {self.vocab_size}")
        for name in ("pad_id", "mask_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{name} must be in [0, vocab_size={self.vocab_size}), got {value}"
                )

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset({self.pad_id, self.mask_id}) | frozenset(self.extra_special_ids)

    def __len__(self) -> int:
        return self.vocab_size
