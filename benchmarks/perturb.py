"""In-silico deletion of every gene: stformer's perturbation path vs Geneformer's published procedure.

Same model (Geneformer V1 shape: 6 layers x 256, 4 heads, intermediate 512, relu, 2,048
positions, vocabulary 25,426; random init, seeded), same cells (the first ``--cells`` of
``sc/cxg_cortex_culture_hvg2000_counts.h5ad`` tokenized with Geneformer's V1 dictionaries),
``delete`` for all genes, both measured in this run. The reference is Geneformer's procedure written
plainly: per cell, its perturbed copies in padded batches of ``--forward-batch-size`` through the
full ``BertForMaskedLM`` with all hidden states, the second-to-last layer mean-pooled over the
non-pad tokens, cosine against the unperturbed cell.

Prints one JSON line: both timings, cells/s, the largest absolute difference of the cosine
similarities, the speed ratio, and on a GPU the model FLOPs utilisation of stformer's run.

    uv run python benchmarks/perturb.py --quick      # 5 cells, a smoke run
    uv run python benchmarks/perturb.py              # 100 cells (2 CPU cores: run on a quiet machine)

The two procedures take turns on chunks of ``--cells-per-batch`` cells, so a change in the
machine's load weighs on both; the running ratio is printed to stderr after each chunk and the
JSON line carries the ratio over the first 5/10/25/50 cells too. Work grows with the square of
each cell's gene count (about 1.57M copy tokens for the first 100 cells, ~28x the first 5).
"""

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (keeps this folder off sys.path)

_root = Path(__file__).resolve().parents[1]
for src in sorted(glob.glob(str(_root / "packages" / "*" / "src"))):
    if src not in sys.path:
        sys.path.insert(0, src)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build_model(seed: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=25_426,
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=512,
        hidden_act="relu",
        max_position_embeddings=2048,
        pad_token_id=0,
    )
    return BertForMaskedLM(cfg).eval()


def tokenize_cells(n_cells: int) -> list[np.ndarray]:
    import stformer_data as sd

    data = _common.shared_data()
    vocab, medians, _ = sd.load_geneformer_dictionaries(data / "geneformer_30M", allow_pickle=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = sd.tokenize_files(
            [data / "sc" / "cxg_cortex_culture_hvg2000_counts.h5ad"],
            Path(tmp) / "corpus",
            vocab=vocab,
            medians=medians,
            progress=False,
        )
        ids = corpus.dataset.select(range(n_cells))["input_ids"]
    return [np.asarray(x, dtype=np.int64) for x in ids]


@torch.no_grad()
def geneformer_procedure(
    model, cells, *, forward_batch_size: int, layer: int, device
) -> list[np.ndarray]:
    """Geneformer's in-silico deletion, plainly: one padded batch of copies per cell, full forward."""

    def embed(batch: list[np.ndarray]) -> torch.Tensor:
        width = max(len(s) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, : len(s)] = torch.as_tensor(s)
            mask[i, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h = out.hidden_states[layer]
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    result = []
    for cell in cells:
        original = embed([cell])
        copies = [np.delete(cell, i) for i in range(len(cell))]
        cos = []
        for s in range(0, len(copies), forward_batch_size):
            emb = embed(copies[s : s + forward_batch_size])
            cos.append(torch.nn.functional.cosine_similarity(emb, original, dim=-1).float().cpu())
        result.append(torch.cat(cos).numpy())
    return result


def stformer_procedure(model, cells, *, tokens_per_batch: int, cells_per_batch: int, device, dtype):
    from stformer_train.perturb import PerturbSpec, PooledEncoder, perturb_batch

    enc = PooledEncoder(model, hidden_layer=-2, special_ids=[0], device=device, dtype=dtype)
    spec = PerturbSpec(perturbation="delete", genes="all")
    cos = []
    for s in range(0, len(cells), cells_per_batch):
        res = perturb_batch(
            enc, cells[s : s + cells_per_batch], spec, tokens_per_batch=tokens_per_batch
        )
        cos.append(np.asarray(res.cos_sim, dtype=np.float32))
    flat = np.concatenate(cos)
    lengths = np.array([len(c) for c in cells])
    return np.split(flat, np.cumsum(lengths)[:-1]), enc.n_tokens


def layer_flops(length: int, hidden: int, inter: int) -> float:
    """FLOPs of one BERT encoder layer on one sequence (a multiply-add is 2)."""
    return 8 * length * hidden**2 + 4 * length * hidden * inter + 4 * length**2 * hidden


def procedure_flops(cells, *, layers: int, hidden: int, inter: int, vocab: int) -> dict[str, float]:
    """Model FLOPs each procedure spends on deleting every gene of ``cells``.

    Geneformer's: the cell and its ``n`` copies of ``n - 1`` tokens through all ``layers`` and the
    MLM head (transform ``h x h`` and decoder ``h x vocab`` on every token). stformer's: the same
    sequences through the ``layers - 1`` layers up to the pooled one, no head, and the first layer's
    query/key/value projections once per cell (``2n - 1`` rows) instead of once per copy. The
    work itself: padding (none in the copies, a little among the unperturbed cells) and the first
    layer's rows run again for each batch of a long cell's copies are not counted.
    """
    geneformer = stformer = 0.0
    run = layers - 1  # hidden_layer=-2
    qkv_row = 2 * hidden * 3 * hidden
    for c in cells:
        n = len(c)
        for length, count in ((n, 1), (n - 1, n)):
            head = 2 * length * hidden**2 + 2 * length * hidden * vocab
            geneformer += count * (layers * layer_flops(length, hidden, inter) + head)
            stformer += count * run * layer_flops(length, hidden, inter)
        stformer += -n * (n - 1) * qkv_row + (2 * n - 1) * qkv_row
    return {"geneformer": geneformer, "stformer": stformer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="5 cells (a smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--forward-batch-size", type=int, default=100, help="Geneformer's default")
    ap.add_argument("--tokens-per-batch", type=int, default=None)
    ap.add_argument(
        "--cells-per-batch",
        type=int,
        default=4,
        help="cells per perturb_batch call, and per turn of the two procedures",
    )
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--skip-reference", action="store_true", help="time stformer only (GPU throughput)"
    )
    args = ap.parse_args()
    n_cells = 5 if args.quick else args.cells
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cells = tokenize_cells(n_cells)
    model = build_model(args.seed).to(device)
    cfg = model.config
    flops = procedure_flops(
        cells,
        layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size,
        inter=cfg.intermediate_size,
        vocab=cfg.vocab_size,
    )
    tokens_per_batch = args.tokens_per_batch or (262_144 if device.type == "cuda" else 16_384)
    figures = {
        "benchmark": "perturb_delete_all",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cells": n_cells,
        "genes_per_cell_mean": float(np.mean([len(c) for c in cells])),
        "perturbations": int(sum(len(c) for c in cells)),
        "stformer_workers": 1 if device.type == "cuda" else torch.get_num_threads(),
    }

    # the two procedures alternate on chunks of cells, so that a change in the machine's load
    # during the run weighs on both alike; each keeps its own total time
    # warm-up of both paths (allocator, GEMM kernels), untimed, on one short sequence
    warm = [cells[0][:32]]
    if not args.skip_reference:
        geneformer_procedure(
            model, warm, forward_batch_size=args.forward_batch_size, layer=-2, device=device
        )
    stformer_procedure(
        model,
        warm,
        tokens_per_batch=tokens_per_batch,
        cells_per_batch=1,
        device=device,
        dtype=torch.float32,
    )
    ref, ours = [], []
    figures["geneformer_s"] = 0.0 if not args.skip_reference else None
    stformer_s = 0.0
    by_cells: dict[int, float] = {}
    chunk = args.cells_per_batch
    for s in range(0, n_cells, chunk):
        part = cells[s : s + chunk]
        if not args.skip_reference:
            t0 = time.perf_counter()
            ref += geneformer_procedure(
                model, part, forward_batch_size=args.forward_batch_size, layer=-2, device=device
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            figures["geneformer_s"] += time.perf_counter() - t0
        # float32 for the agreement check; on a GPU a second run in bf16 gives the throughput
        t0 = time.perf_counter()
        got, _ = stformer_procedure(
            model,
            part,
            tokens_per_batch=tokens_per_batch,
            cells_per_batch=chunk,
            device=device,
            dtype=torch.float32,
        )
        ours += got
        if device.type == "cuda":
            torch.cuda.synchronize()
        stformer_s += time.perf_counter() - t0
        done = min(n_cells, s + chunk)
        if not args.skip_reference:  # the ratio so far, per size (cumulative over the first cells)
            by_cells[done] = round(figures["geneformer_s"] / stformer_s, 2)
            print(
                f"{done}/{n_cells} cells: geneformer {figures['geneformer_s']:.1f} s, "
                f"stformer {stformer_s:.1f} s, {by_cells[done]}x",
                file=sys.stderr,
                flush=True,
            )
    if args.skip_reference:
        ref = None
    else:
        figures["geneformer_s"] = round(figures["geneformer_s"], 3)
    figures["stformer_s"] = round(stformer_s, 3)
    figures["stformer_cells_per_s"] = round(n_cells / stformer_s, 3)
    if ref is not None:
        figures["max_abs_cos_diff"] = float(
            max(np.abs(a - b).max() for a, b in zip(ref, ours, strict=True))
        )
        figures["agree_1e-4"] = figures["max_abs_cos_diff"] <= 1e-4
        figures["speedup"] = round(figures["geneformer_s"] / figures["stformer_s"], 2)
        # where the ratio comes from: work skipped (the FLOP ratio) times work done faster
        figures["geneformer_tflop"] = round(flops["geneformer"] / 1e12, 3)
        figures["stformer_tflop"] = round(flops["stformer"] / 1e12, 3)
        figures["flop_ratio"] = round(flops["geneformer"] / flops["stformer"], 2)
        figures["geneformer_gflop_per_s"] = round(
            flops["geneformer"] / figures["geneformer_s"] / 1e9, 1
        )
        figures["stformer_gflop_per_s"] = round(flops["stformer"] / figures["stformer_s"] / 1e9, 1)
        # the running ratio at the chunk boundary nearest below 5, 10, 25 and 50 cells
        sizes = {max((k for k in by_cells if k <= n), default=None) for n in (5, 10, 25, 50)}
        figures["speedup_first_cells"] = {
            str(k): by_cells[k] for k in sorted(k for k in sizes if k is not None and k < n_cells)
        }
    if device.type == "cuda":
        model = build_model(args.seed).to(device)
        t0 = time.perf_counter()
        ours_bf16, _ = stformer_procedure(
            model,
            cells,
            tokens_per_batch=tokens_per_batch,
            cells_per_batch=args.cells_per_batch,
            device=device,
            dtype=torch.bfloat16,
        )
        torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        figures["stformer_bf16_s"] = round(sec, 3)
        figures["stformer_bf16_cells_per_s"] = round(n_cells / sec, 3)
        figures["bf16_max_abs_cos_diff_vs_fp32"] = float(
            max(np.abs(a - b).max() for a, b in zip(ours, ours_bf16, strict=True))
        )
        peak = float(os.environ.get("PEAK_BF16_TFLOPS", "989")) * 1e12  # H100/H200 dense bf16
        figures["stformer_bf16_mfu"] = round(flops["stformer"] / sec / peak, 4)
        figures["peak_bf16_tflops_assumed"] = peak / 1e12
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
