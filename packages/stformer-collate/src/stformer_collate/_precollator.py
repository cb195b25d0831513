"""A tokenizer-like view of a token dictionary (the base of stFormer's ``STFormerPreCollator``).

stFormer and Geneformer pretrain with transformers' ``DataCollatorForLanguageModeling``, which
expects a tokenizer. Their "pre-collator" is the smallest object that plays that role for an
already tokenized corpus: it knows the vocabulary, the pad and mask tokens, and how to pad. This
class provides the same API without importing transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from stformer_collate._layout import flatten_examples, layout_padded, padded_length

PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"
CLS_TOKEN = "<cls>"
EOS_TOKEN = "<eos>"

_PADDED_FIELDS = ("token_type_ids", "special_tokens_mask")


class PreCollator:
    """Wrap a token dictionary (``token -> id``) so it can serve as a tokenizer for collation.

    Parameters
    ----------
    token_dict
        The vocabulary, e.g. a ``stformer_data.GeneVocab`` or the dict of Geneformer's
        ``token_dictionary.pkl``. Ids must be unique.
    pad_token, mask_token
        Names of the pad and mask tokens; both must be in ``token_dict``.
    cls_token, eos_token
        Names of the optional cell and end-of-sequence tokens; used when present.
    padding_side
        ``"right"`` (default) or ``"left"``.
    model_max_length
        The longest sequence a model takes (informative; :meth:`pad` does not truncate).

    It works as the ``tokenizer`` of transformers' ``DataCollatorForLanguageModeling``: it has
    ``pad_token``/``pad_token_id``, ``mask_token``/``mask_token_id``, ``padding_side``,
    ``model_input_names``, ``all_special_ids``, ``__len__``, ``convert_tokens_to_ids``,
    ``convert_ids_to_tokens``, ``get_special_tokens_mask`` and ``pad``.

    >>> pre = PreCollator({"<pad>": 0, "<mask>": 1, "ENSG01": 2, "ENSG02": 3})
    >>> len(pre), pre.convert_tokens_to_ids(["ENSG02", "nope"]), pre.mask_token_id
    (4, [3, None], 1)
    >>> pre.pad([{"input_ids": [2, 3]}, {"input_ids": [3]}])["input_ids"]
    [[2, 3], [3, 0]]
    """

    is_fast = False
    model_input_names = ["input_ids", "attention_mask"]  # noqa: RUF012  (transformers' name)

    def __init__(
        self,
        token_dict: Mapping[str, int],
        *,
        pad_token: str = PAD_TOKEN,
        mask_token: str = MASK_TOKEN,
        cls_token: str = CLS_TOKEN,
        eos_token: str = EOS_TOKEN,
        padding_side: Literal["right", "left"] = "right",
        model_max_length: int = 2048,
    ) -> None:
        self.token_dict = {str(k): int(v) for k, v in token_dict.items()}
        self._id_to_token = {v: k for k, v in self.token_dict.items()}
        if len(self._id_to_token) != len(self.token_dict):
            raise ValueError("token_dict maps several tokens to one id: ids must be unique")
        for name, token in (("pad_token", pad_token), ("mask_token", mask_token)):
            if token not in self.token_dict:
                raise ValueError(f"{name} {token!r} is not in token_dict: add it or pass its name")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token = pad_token
        self.mask_token = mask_token
        self.cls_token = cls_token if cls_token in self.token_dict else None
        self.eos_token = eos_token if eos_token in self.token_dict else None
        self.padding_side = padding_side
        self.model_max_length = model_max_length
        self._special_ids = np.asarray(self.all_special_ids, dtype=np.int64)

    # --- vocabulary ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_dict)

    @property
    def vocab_size(self) -> int:
        return len(self.token_dict)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.token_dict)

    @property
    def pad_token_id(self) -> int:
        return self.token_dict[self.pad_token]

    @property
    def mask_token_id(self) -> int:
        return self.token_dict[self.mask_token]

    @property
    def cls_token_id(self) -> int | None:
        return None if self.cls_token is None else self.token_dict[self.cls_token]

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.token_dict[self.eos_token]

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = [self.pad_token, self.mask_token, self.cls_token, self.eos_token]
        return [t for t in tokens if t is not None]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.token_dict[t] for t in self.all_special_tokens]

    # The TokenSpec protocol, so the native collators take this object as their spec too.
    @property
    def pad_id(self) -> int:
        return self.pad_token_id

    @property
    def mask_id(self) -> int:
        return self.mask_token_id

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.all_special_ids)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        """Id of a token, or ids of a list of tokens; ``None`` for an unknown token."""
        if isinstance(tokens, str):
            return self.token_dict.get(tokens)
        return [self.token_dict.get(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | None | list[str | None]:
        """Token of an id, or tokens of a list of ids; ``None`` for an unknown id."""
        if isinstance(ids, (int, np.integer)) or (isinstance(ids, torch.Tensor) and ids.dim() == 0):
            return self._id_to_token.get(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token.get(int(i)) for i in ids if int(i) not in special]

    def get_special_tokens_mask(
        self,
        token_ids_0: Sequence[int],
        token_ids_1: Sequence[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where a token is special (pad, mask, and cls/eos when the vocabulary has them).

        The ids are used as they are (this vocabulary adds no special tokens around sequences),
        so ``already_has_special_tokens`` does not change the answer.
        """
        ids = list(token_ids_0) + (list(token_ids_1) if token_ids_1 is not None else [])
        return np.isin(np.asarray(ids, dtype=np.int64), self._special_ids).astype(int).tolist()

    # --- encoding and padding --------------------------------------------------------------------
    def __call__(
        self,
        tokens: Sequence[str] | Sequence[Sequence[str]],
        *,
        padding: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encode gene tokens (one cell, or a list of cells) into ``input_ids``.

        Unknown tokens raise ``ValueError``. With ``padding`` the cells are padded as by
        :meth:`pad`.
        """
        single = len(tokens) == 0 or isinstance(tokens[0], str)
        cells = [tokens] if single else list(tokens)
        encoded = []
        for i, cell in enumerate(cells):
            ids = self.convert_tokens_to_ids(list(cell))
            if None in ids:
                unknown = [t for t, v in zip(cell, ids, strict=True) if v is None][:5]
                raise ValueError(
                    f"cell {i}: tokens {unknown} are not in the vocabulary: map genes with the "
                    "vocabulary the model was trained with"
                )
            encoded.append({"input_ids": ids})
        if single and not padding:
            out = {"input_ids": encoded[0]["input_ids"], "attention_mask": [1] * len(cells[0])}
            return self._convert(out, return_tensors)
        if not padding:
            return self._convert(
                {
                    "input_ids": [e["input_ids"] for e in encoded],
                    "attention_mask": [[1] * len(e["input_ids"]) for e in encoded],
                },
                return_tensors,
            )
        out = self.pad(
            encoded, padding=padding, max_length=max_length, return_tensors=return_tensors
        )
        if single:
            out = {k: v[0] for k, v in out.items()}
        return out

    def pad(
        self,
        encoded_inputs: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
        **_: Any,
    ) -> dict[str, Any]:
        """Pad examples to one length.

        Parameters
        ----------
        encoded_inputs
            A list of mappings with ``input_ids``, or one mapping of lists (a batch), or one
            mapping of one example.
        padding
            ``True``/``"longest"``: to the longest example; ``"max_length"``: to ``max_length``;
            ``False``/``"do_not_pad"``: leave as is.
        max_length
            Required with ``padding="max_length"``; a longer example is an error (no truncation).
        pad_to_multiple_of
            Round the padded length up to a multiple of this.
        return_attention_mask
            ``False`` omits ``attention_mask``.
        return_tensors
            ``None`` for lists, ``"pt"`` for torch tensors, ``"np"`` for numpy arrays.

        ``token_type_ids`` and ``special_tokens_mask`` are padded alongside (with 0 and 1);
        numeric per-example values (such as ``length``) become a 1-D tensor or list; other
        keys are passed through as lists.
        """
        examples, single = self._as_examples(encoded_inputs)
        strategy = self._padding_strategy(padding, max_length)
        flat = flatten_examples(examples, fields=_PADDED_FIELDS)
        if strategy == "max_length" and flat.lengths.size and int(flat.lengths.max()) > max_length:
            raise ValueError(
                f"an example has {int(flat.lengths.max())} tokens, more than max_length={max_length}: "
                "raise max_length or truncate when tokenizing (pad does not truncate)"
            )
        if strategy == "do_not_pad":
            if return_tensors is not None and np.unique(flat.lengths).size > 1:
                raise ValueError("padding=False with return_tensors needs examples of equal length")
            out = {
                "input_ids": [list(map(int, e["input_ids"])) for e in examples],
                "attention_mask": [[1] * int(n) for n in flat.lengths],
            }
            for name in flat.fields:
                out[name] = [list(map(int, e[name])) for e in examples]
        else:
            out = self._pad_flat(flat, strategy, max_length, pad_to_multiple_of, return_tensors)
        if return_attention_mask is False:
            out.pop("attention_mask", None)
        for key in examples[0]:
            if key not in out and key != "input_ids":
                out[key] = [e.get(key) for e in examples]
        out = self._convert(out, return_tensors)
        if single:
            out = {k: v[0] for k, v in out.items()}
        return out

    def _pad_flat(self, flat, strategy, max_length, pad_to_multiple_of, return_tensors):
        length = padded_length(
            flat.lengths,
            pad_to_multiple_of=pad_to_multiple_of,
            max_length=max_length if strategy == "max_length" else None,
        )
        arrays = {"input_ids": (flat.ids, self.pad_token_id)}
        pads = {"token_type_ids": 0, "special_tokens_mask": 1}
        arrays.update({name: (values, pads[name]) for name, values in flat.fields.items()})
        batch, _ = layout_padded(flat, arrays, length=length)
        if self.padding_side == "left":
            shift = length - flat.lengths
            batch = {k: _shift_right(v, shift) for k, v in batch.items()}
        if return_tensors is None:
            return {k: v.tolist() for k, v in batch.items()}
        return batch

    @staticmethod
    def _as_examples(encoded_inputs) -> tuple[list[Mapping[str, Any]], bool]:
        if isinstance(encoded_inputs, Mapping):
            ids = encoded_inputs.get("input_ids")
            if ids is None:
                raise ValueError("encoded_inputs has no 'input_ids'")
            if len(ids) == 0 or np.ndim(ids[0]) == 0:  # one example
                return [encoded_inputs], True
            keys = list(encoded_inputs)
            return [{k: encoded_inputs[k][i] for k in keys} for i in range(len(ids))], False
        examples = list(encoded_inputs)
        if not examples:
            raise ValueError("cannot pad an empty list of examples")
        return examples, False

    @staticmethod
    def _padding_strategy(padding: bool | str, max_length: int | None) -> str:
        if padding is True or padding == "longest":
            return "longest"
        if padding is False or padding == "do_not_pad":
            return "do_not_pad"
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            return "max_length"
        raise ValueError(
            f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}"
        )

    @staticmethod
    def _convert(out: dict[str, Any], return_tensors: str | None) -> dict[str, Any]:
        if return_tensors is None:
            return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        converted: dict[str, Any] = {}
        for key, value in out.items():
            if not isinstance(value, torch.Tensor):
                try:
                    value = torch.as_tensor(np.asarray(value))
                except (TypeError, ValueError, RuntimeError):
                    converted[key] = value  # strings or ragged values stay as lists
                    continue
            converted[key] = value.numpy() if return_tensors == "np" else value
        return converted


def _shift_right(grid: torch.Tensor, shift: np.ndarray) -> torch.Tensor:
    """Move each right-padded row's tokens to the end of the row (left padding)."""
    length = grid.shape[1]
    cols = (np.arange(length)[None, :] - shift[:, None]) % max(length, 1)
    return torch.from_numpy(np.take_along_axis(grid.numpy(), cols, axis=1))
