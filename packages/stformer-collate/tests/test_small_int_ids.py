"""Token ids stored in small integer types (stformer corpora: uint16; Geneformer: int16) collate
into the same int64 batches as int64 ids."""

import numpy as np
import pytest
import torch

from stformer_collate import DataCollatorForMLM, SimpleTokenSpec, collate_fn_wrapper


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_small_int_ids_collate_to_int64(dtype, as_tensor):
    rows = [np.array([5, 60_000 % 700, 7], dtype=dtype), np.array([8, 9], dtype=dtype)]
    examples = [{"input_ids": torch.from_numpy(r) if as_tensor else r} for r in rows]
    reference = [{"input_ids": r.astype(np.int64).tolist()} for r in rows]
    spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=700)
    got = DataCollatorForMLM(spec=spec, seed=3)(examples)
    want = DataCollatorForMLM(spec=spec, seed=3)(reference)
    assert got["input_ids"].dtype == torch.int64 == got["labels"].dtype
    for key in want:
        assert torch.equal(got[key], want[key]), key
    padded = collate_fn_wrapper()(examples)
    assert padded["input_ids"].dtype == torch.int64
    assert padded["input_ids"][0].tolist() == rows[0].astype(np.int64).tolist()
