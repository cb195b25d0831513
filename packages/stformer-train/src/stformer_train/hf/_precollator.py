"""stFormer's ``STFormerPreCollator``: a token dictionary that serves as the tokenizer of MLM collation.

It is :class:`stformer_collate.PreCollator` (vocabulary, special tokens, the
:class:`~stformer_collate.TokenSpec` protocol) with stFormer's documented ``__call__`` and ``pad``,
which return transformers' ``BatchEncoding`` (stformer-collate itself does not import
transformers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchEncoding

from stformer_collate import PreCollator
from stformer_train._names import unknown_name_error

# keywords transformers' collators pass to ``tokenizer.pad`` (besides the documented ones)
_PAD_KEYWORDS = ("pad_to_multiple_of", "return_attention_mask", "padding_side", "verbose")


class STFormerPreCollator(PreCollator):
    """stFormer's data collator for single-cell tokens: padding and token conversion.

    Parameters
    ----------
    token_dict
        Token string -> id (gene ids and special tokens); must hold ``<pad>`` and ``<mask>``.

    It is the ``tokenizer`` of transformers' ``DataCollatorForLanguageModeling`` (``pad``,
    ``get_special_tokens_mask``, ``convert_tokens_to_ids``, ``pad_token_id``, ``mask_token``,
    ``__len__``) and a :class:`stformer_collate.TokenSpec` for stformer's own MLM collator.

    >>> pre = STFormerPreCollator({"<pad>": 0, "<mask>": 1, "ENSG01": 2, "ENSG02": 3})
    >>> pre.pad([{"input_ids": [2, 3, 2]}, {"input_ids": [3]}], max_length=2)["input_ids"]
    [[2, 3], [3, 0]]
    """

    def __init__(self, token_dict: Mapping[str, int]) -> None:
        super().__init__(token_dict)
        # transformers' collators look for this on a "slow" tokenizer before calling pad
        self.deprecation_warnings: dict[str, bool] = {}

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> BatchEncoding:
        """A batch of the examples' ``input_ids`` as lists (no padding, no masking).

        Masking is the MLM collator's job (transformers' ``DataCollatorForLanguageModeling`` with
        this object as its tokenizer, or :class:`stformer_collate.DataCollatorForMLM`).
        """
        if isinstance(examples, Mapping):
            raise TypeError(
                "STFormerPreCollator() takes a list of examples (dicts with 'input_ids'), not one dict"
            )
        batch = []
        for i, example in enumerate(examples):
            if not isinstance(example, Mapping) or "input_ids" not in example:
                raise ValueError(f"example {i} has no 'input_ids': pass dicts with 'input_ids'")
            batch.append([int(t) for t in example["input_ids"]])
        return BatchEncoding({"input_ids": batch})

    def pad(
        self,
        encoded_inputs: Sequence[Mapping[str, Sequence[int]]] | BatchEncoding,
        padding: bool | str = True,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Pad (and, beyond ``max_length``, truncate) sequences to one length, with ``attention_mask``.

        Parameters
        ----------
        encoded_inputs
            A list of dicts with ``input_ids`` or a ``BatchEncoding`` / dict of lists.
        padding
            ``True`` / ``"longest"``: to the longest sequence (after truncation); ``"max_length"``:
            to ``max_length``; ``False``: no padding (sequences are still truncated).
        max_length
            Sequences longer than this are cut to it (stFormer keeps the top-ranked genes, which
            come first); ``None`` keeps them whole.
        return_tensors
            ``None`` (lists), ``"pt"`` or ``"np"``.
        kwargs
            ``pad_to_multiple_of``, ``return_attention_mask``, ``padding_side`` (``"right"`` /
            ``"left"``) and ``verbose``, the keywords transformers' collators pass; any other is a
            ``TypeError``.
        """
        for key in kwargs:
            if key not in _PAD_KEYWORDS:
                raise unknown_name_error(
                    "STFormerPreCollator.pad()",
                    "keyword argument",
                    key,
                    ("encoded_inputs", "padding", "max_length", "return_tensors", *_PAD_KEYWORDS),
                )
        kwargs.pop("verbose", None)  # only silences transformers' own warnings
        side = kwargs.pop("padding_side", None)
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length must be an int >= 1 or None, got {max_length!r}")
        examples, single = self._truncated(encoded_inputs, max_length)
        saved = self.padding_side
        if side is not None:
            if side not in ("right", "left"):
                raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
            self.padding_side = side
        try:
            out = super().pad(
                examples,
                padding=padding,
                max_length=max_length,
                return_tensors=return_tensors,
                **kwargs,
            )
        finally:
            self.padding_side = saved
        out = dict(out)
        if single:  # one example in, one example out (as transformers' tokenizers do)
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out, tensor_type=None)

    @staticmethod
    def _truncated(encoded_inputs, max_length):
        single = False
        if isinstance(encoded_inputs, Mapping):  # a BatchEncoding or a dict of lists
            keys = list(encoded_inputs)
            ids = encoded_inputs.get("input_ids")
            if ids is None:
                raise ValueError("encoded_inputs has no 'input_ids'")
            if len(ids) and not isinstance(ids[0], Sequence | np.ndarray | torch.Tensor):
                examples, single = [dict(encoded_inputs)], True  # one example
            else:
                examples = [{k: encoded_inputs[k][i] for k in keys} for i in range(len(ids))]
        else:
            examples = list(encoded_inputs)
        if max_length is None:
            return examples, single
        cut = []
        for example in examples:
            example = dict(example)
            for key in ("input_ids", "token_type_ids", "special_tokens_mask", "attention_mask"):
                if key in example and len(example[key]) > max_length:
                    example[key] = list(example[key])[:max_length]
            cut.append(example)
        return cut, single
