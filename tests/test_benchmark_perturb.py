"""benchmarks/perturb.py: its FLOP accounting agrees with torch's own FLOP counter on a tiny model."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _addmm_inplace_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """``x.addmm_(a, b)``, which torch's counter does not know: a ``[m, k] x [k, n]`` product."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("perturb_bench", BENCH / "perturb.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:  # benchmarks/_common takes its folder off sys.path itself
        if str(BENCH) in sys.path:
            sys.path.remove(str(BENCH))


def test_procedure_flops_match_the_flop_counter(bench):
    torch.manual_seed(0)
    dims = {"layers": 3, "hidden": 16, "inter": 24, "vocab": 40}
    cfg = BertConfig(
        vocab_size=dims["vocab"],
        hidden_size=dims["hidden"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=2,
        intermediate_size=dims["inter"],
        hidden_act="relu",
        max_position_embeddings=32,
        pad_token_id=0,
    )
    model = BertForMaskedLM(cfg).eval()
    # equal lengths and one batch per cell: no padding and no first-layer table run twice, which
    # the accounting leaves out (it counts the work itself)
    cells = [np.arange(3, 12), np.arange(20, 29)]
    want = bench.procedure_flops(cells, **dims)
    cpu = torch.device("cpu")
    counted = {}
    with FlopCounterMode(display=False) as count:
        bench.geneformer_procedure(model, cells, forward_batch_size=4, layer=-2, device=cpu)
    counted["geneformer"] = count.get_total_flops()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker: the counter sees the ops of its own thread only
    try:
        inplace = {torch.ops.aten.addmm_: _addmm_inplace_flops}  # the fused layers' residual adds
        with FlopCounterMode(display=False, custom_mapping=inplace) as count:
            bench.stformer_procedure(
                model,
                cells,
                tokens_per_batch=200,
                cells_per_batch=2,
                device=cpu,
                dtype=torch.float32,
            )
    finally:
        torch.set_num_threads(threads)
    counted["stformer"] = count.get_total_flops()
    assert counted == pytest.approx(want, rel=1e-9), (counted, want)
    assert want["geneformer"] > want["stformer"]  # no MLM head, one layer fewer
