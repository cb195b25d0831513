"""Benchmark: pretraining throughput, naive padding vs length grouping vs stformer vs packed.

**CPU (the default).** Tokenizes real cells from ``../shared/data`` (PBMC and cortex culture,
Geneformer's 30M token dictionary and medians, up to 2,048 tokens), draws ``steps x batch`` cells,
and trains the same 6-layer, 256-wide BERT (4 heads, intermediate 512) on the same batches and
masks with

* (a) ``naive``: every sequence padded to 2,048, logits at every position;
* (b) ``length_grouped``: batches grouped by length, padded to the longest (Geneformer's setup),
  logits at every position;
* (c) ``stformer``: (b) plus logits only at the masked positions (``masked_positions``);
* (d) ``packed``: (c)'s batches with the cells back to back in one row, no padding at all
  (``BatchForm.PACKED``), each cell attending only to itself (``PACKED_ATTENTION``), logits only
  at the masked positions.

It reports real (non-pad) tokens per second, the ratios (c)/(a), (c)/(b) and (d)/(c), the loss
after the last step (the four compute the same function, so the losses agree up to the noise of
their dropout draws) and ``loss_check``: the untrained model's eval-mode loss on the first batch,
padded and packed (equal to float precision). The setups take their steps in turn (step 1 of a,
b, c, d, then step 2, ...), so that other load on a shared machine slows all of them alike.
Targets: (c) >= 3x (a), (c) >= 1.5x (b), (d) >= 1.3x (c).
Usage: ``uv run python benchmarks/train.py [--steps 8] [--batch-size 8]``: about 9 minutes on 2
idle cores (fewer steps draw fewer cells, and the ratios swing with the longest cell drawn); batch
8 padded to 2,048 peaks near 18 GB of RAM, ``--batch-size 4`` about half of that.

**GPU (``--device cuda``).** Needs only torch, transformers and numpy (no anndata or datasets):
run it with ``PYTHONPATH=packages/stformer-collate/src:packages/stformer-train/src``. It draws
synthetic Geneformer-like cells (lengths log-normal, median 1,200 genes, sigma 0.6, clipped to
[64, the model's input size]: about a fifth of the cells are truncated at 2,048) and, under bf16
autocast, trains each shape of ``--shapes`` (``v1``: Geneformer V1, 6 x 256, 4 heads, ffn 512,
2,048 tokens; ``v2``: Geneformer V2-104M, 12 x 768, 12 heads, ffn 3,072, 4,096 tokens) with

* ``padded``: random batches, every cell padded to the input size;
* ``length_grouped``: length-grouped batches padded to the longest (a multiple of 8);
* ``packed``: the random batches packed into one row per step (``PACKED_ATTENTION``'s GPU
  backend: flash varlen, or nested-tensor SDPA while attention dropout is on);
* ``packed_no_attn_dropout``: ``packed`` with attention dropout 0 (the flash ``varlen_attn``
  kernel), when the model has attention dropout;

all with logits only at the masked positions and fused AdamW, after ``--warmup`` untimed steps.
For each: real tokens/s, step time, peak memory (``torch.cuda.max_memory_allocated``) and model
FLOPs utilisation,

    MFU = model FLOPs per step / step time / (peak bf16 FLOP/s),
    model FLOPs per step = 6 * N_enc * T + 12 * L * H * sum_i(s_i ** 2) + 6 * N_head * M,

with ``N_enc`` the weights of the encoder layers' matrix products, ``T`` the real (non-pad)
tokens, ``L`` layers, ``H`` hidden size, ``s_i`` the length of cell ``i`` (the sequence each
token actually attends over; ``12 * L * H * s`` per token is QK^T and AV, forward + backward),
``N_head`` the MLM head's weights (transform + decoder) and ``M`` the masked tokens (the only
rows that reach the head). Padding is not model FLOPs: a padded setup's MFU counts only its
real work. The peak is ``--peak-tflops`` (H200 dense bf16: 989); the JSON also gives the MFU
against a measured 8,192^3 bf16 matrix product. ``parity`` first checks, on the device, that a
small model's packed loss and gradients equal the padded ones for each packed-attention backend
(fp32 and bf16). Then embedding throughput (cells/s, eval
forward + mean pooling, length-sorted padded batches vs packed rows) and, with ``--profile``, the
top CUDA kernels of a few steps of the largest shape's packed setup. One JSON line on stdout and
in ``$OUT/train_cuda.json`` when ``$OUT`` is set.

``--device cpu --synthetic`` runs the GPU code path on the CPU (without bf16 unless ``--bf16``);
``--dry-run`` prints the plan (shapes, batches, FLOP formula) without training.
"""

from __future__ import annotations

import _common  # must come first: see benchmarks/_common.py

# isort: split

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FILES = ("sc/pbmc10k_protein_v3_200_scvi.h5ad", "sc/cxg_cortex_culture_hvg2000_counts.h5ad")
FLOP_FORMULA = (
    "6*N_enc*T + 12*L*H*sum(s_i^2) + 6*N_head*M (forward+backward; T real tokens, s_i cell "
    "lengths, M masked tokens; padding not counted)"
)
SHAPES = {
    # name: (layers, hidden, heads, intermediate, input size, cells per step)
    "v1": (6, 256, 4, 512, 2048, 32),
    "v2": (12, 768, 12, 3072, 4096, 8),
    "tiny": (2, 64, 2, 128, 2048, 2),
}


# --- CPU: real cells ---------------------------------------------------------------------------
def tokenize(root: Path, workdir: Path):
    import stformer_data as sd

    gf = root / "geneformer_30M"
    vocab = sd.GeneVocab.load(gf / "token_dictionary.pkl", allow_pickle=True)
    medians = sd.load_medians(gf / "gene_median_dictionary.pkl", allow_pickle=True)
    with (gf / "gene_name_id_dict.pkl").open("rb") as fh:
        name_to_id = pickle.load(fh)  # noqa: S301 - the shared Geneformer dictionaries
    corpus = sd.tokenize_files(
        [root / f for f in FILES],
        workdir / "corpus",
        vocab=vocab,
        medians=medians,
        name_to_id=name_to_id,
        progress=False,
    )
    return corpus.dataset["input_ids"], vocab


class Setup:
    """One training setup (model, optimiser, collator, loss); :meth:`step` times one step."""

    def __init__(self, model, collate, loss_fn, *, pad_to=None, seed=0):
        self.model, self.collate, self.loss_fn, self.pad_to = model, collate, loss_fn, pad_to
        # Each setup draws its dropout masks from its own random stream, as if it ran alone.
        self.rng = torch.Generator().manual_seed(seed).get_state()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.001)
        self.model.train()
        self.real = 0
        self.seconds = 0.0
        self.losses: list[float] = []

    def batch(self, examples):
        batch = self.collate(examples)
        if self.pad_to is not None:
            batch = pad_batch(batch, self.pad_to, self.collate.spec.pad_id)
        return batch

    def step(self, examples) -> None:
        start = time.perf_counter()
        batch = self.batch(examples)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            loss = self.loss_fn(self.model, batch)
            self.rng = torch.get_rng_state()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))
        self.seconds += time.perf_counter() - start
        self.real += sum(len(e["input_ids"]) for e in examples)

    def result(self) -> dict:
        return {
            "real_tokens_per_s": round(self.real / self.seconds, 1),
            "seconds": round(self.seconds, 2),
            "loss_last_step": round(self.losses[-1], 4),
            "loss_first_step": round(self.losses[0], 4),
        }


def pad_batch(batch, length, pad_id):
    """Right-pad a padded batch to ``length`` columns (``masked_positions`` follow the new width)."""
    out = dict(batch)
    n, cur = batch["input_ids"].shape
    for key, fill in (("input_ids", pad_id), ("labels", -100), ("attention_mask", 0)):
        padded = torch.full((n, length), fill, dtype=batch[key].dtype)
        padded[:, :cur] = batch[key]
        out[key] = padded
    if "masked_positions" in batch:
        pos = batch["masked_positions"]
        out["masked_positions"] = pos // cur * length + pos % cur
    return out


def run_cpu(args) -> dict:
    from stformer_collate import BatchForm, DataCollatorForMLM
    from stformer_train import ModelConfig
    from stformer_train.models import bert_config_from, build_mlm_model, dense_mlm_loss, mlm_loss
    from stformer_train.training import EpochLengthGroupedSampler

    with tempfile.TemporaryDirectory() as tmp:
        seqs, vocab = tokenize(_common.shared_data(), Path(tmp))
    rng = np.random.default_rng(args.seed)
    n = args.steps * args.batch_size
    pick = rng.choice(len(seqs), size=n, replace=False)
    examples = [{"input_ids": seqs[i]} for i in pick]
    lengths = [len(e["input_ids"]) for e in examples]
    order = list(EpochLengthGroupedSampler(args.batch_size, lengths, seed=args.seed))
    batches = [
        [examples[i] for i in order[s : s + args.batch_size]] for s in range(0, n, args.batch_size)
    ]
    shape = ModelConfig(
        num_layers=6,
        hidden_size=256,
        num_heads=4,
        intermediate_size=512,
        max_position_embeddings=2048,
    )
    config = bert_config_from(shape, vocab_size=len(vocab), pad_token_id=vocab.pad_id)

    def fresh():
        return build_mlm_model(config, seed=args.seed)

    def dense_collator():
        return DataCollatorForMLM(spec=vocab, seed=args.seed)

    def sparse_collator(form):
        return DataCollatorForMLM(
            spec=vocab, seed=args.seed, return_masked_positions=True, form=form
        )

    def sparse_loss(model, batch):
        return mlm_loss(model, batch)[0]

    makers = {
        "a": (
            "naive_pad2048_full_logits",
            lambda: Setup(fresh(), dense_collator(), dense_mlm_loss, pad_to=2048, seed=args.seed),
        ),
        "b": (
            "length_grouped_full_logits",
            lambda: Setup(fresh(), dense_collator(), dense_mlm_loss, seed=args.seed),
        ),
        "c": (
            "stformer_default",
            lambda: Setup(fresh(), sparse_collator(BatchForm.PADDED), sparse_loss, seed=args.seed),
        ),
        "d": (
            "packed",
            lambda: Setup(fresh(), sparse_collator(BatchForm.PACKED), sparse_loss, seed=args.seed),
        ),
    }
    unknown = set(args.setups.split(",")) - set(makers)
    if unknown:
        sys.exit(f"--setups: unknown {sorted(unknown)}; choose from a, b, c, d")
    check_model = fresh().eval()
    with torch.no_grad():
        check = {
            form.value: float(sparse_loss(check_model, sparse_collator(form)(batches[0])))
            for form in (BatchForm.PADDED, BatchForm.PACKED)
        }
    del check_model
    setups = {makers[k][0]: makers[k][1]() for k in args.setups.split(",")}
    # Round robin: step i of every setup before step i + 1 of any, so that load from other
    # processes on a shared machine falls on all setups alike and the ratios stay meaningful.
    for i, examples in enumerate(batches):
        for name, setup in setups.items():
            setup.step(examples)
            print(f"step {i} {name}: {setup.losses[-1]:.4f}", file=sys.stderr, flush=True)
    results = {name: setup.result() for name, setup in setups.items()}
    tps = {k: v["real_tokens_per_s"] for k, v in results.items()}
    a = tps.get("naive_pad2048_full_logits")
    b = tps.get("length_grouped_full_logits")
    c = tps.get("stformer_default")
    d = tps.get("packed")
    met = {}
    if a and c:
        met["c_over_a_ge_3"] = c >= 3 * a
    if b and c:
        met["c_over_b_ge_1.5"] = c >= 1.5 * b
    if c and d:
        met["d_over_c_ge_1.3"] = d >= 1.3 * c
    return {
        "benchmark": "train",
        "device": "cpu",
        "threads": args.threads,
        "model": "bert 6x256, 4 heads, ffn 512, PACKED_ATTENTION (sdpa on padded batches)",
        "vocab": len(vocab),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "cells_available": len(seqs),
        "mean_length": round(float(np.mean(lengths)), 1),
        "max_length": int(max(lengths)),
        "loss_check": {
            "eval_loss_first_batch": {k: round(v, 6) for k, v in check.items()},
            "abs_diff": abs(check["padded"] - check["packed"]),
        },
        **results,
        "speedup_c_over_a": round(c / a, 2) if a and c else None,
        "speedup_c_over_b": round(c / b, 2) if b and c else None,
        "speedup_d_over_c": round(d / c, 2) if c and d else None,
        "targets_met": met or None,
    }


# --- GPU (or --synthetic): synthetic Geneformer-like cells -------------------------------------
def synthetic_cells(n: int, max_len: int, vocab: int, rng: np.random.Generator) -> list[dict]:
    """``n`` cells of gene tokens (ids 2..vocab-1, no repeats within a cell), Geneformer-like lengths."""
    lengths = np.clip(np.rint(rng.lognormal(np.log(1200), 0.6, size=n)), 64, max_len)
    lengths = np.minimum(lengths, vocab - 2).astype(int)
    return [{"input_ids": rng.choice(np.arange(2, vocab), int(s), replace=False)} for s in lengths]


def grouped_batches(cells: list[dict], per_step: int, rng: np.random.Generator) -> list[list]:
    """Length-grouped batches (sorted longest first, then the batches shuffled, the longest first)."""
    order = np.argsort([-len(c["input_ids"]) for c in cells], kind="stable")
    batches = [[cells[i] for i in order[s : s + per_step]] for s in range(0, len(order), per_step)]
    rest = list(rng.permutation(len(batches) - 1) + 1)
    return [batches[0]] + [batches[i] for i in rest]


def model_flops(model, batch_lengths: list[int], n_masked: int) -> float:
    """Model FLOPs of one training step (forward + backward), :data:`FLOP_FORMULA`."""
    cfg = model.config
    n_enc = sum(
        m.weight.numel() for m in model.bert.encoder.modules() if isinstance(m, torch.nn.Linear)
    )
    head = model.cls.predictions
    n_head = head.transform.dense.weight.numel() + head.decoder.weight.numel()
    lengths = np.asarray(batch_lengths, dtype=np.float64)
    attn = 12.0 * cfg.num_hidden_layers * cfg.hidden_size * float((lengths**2).sum())
    return 6.0 * n_enc * float(lengths.sum()) + attn + 6.0 * n_head * n_masked


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _to(batch: dict, device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def train_setup(model, batches, *, device, bf16, warmup, collate) -> dict:
    """Train ``model`` on ``batches`` (``warmup`` untimed first); time, memory and loss."""
    from stformer_train.models import mlm_loss
    from stformer_train.models._attention import packed_attention_backend

    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.001, fused=fused)
    model.train()
    collated = [collate(b) for b in batches]
    losses, seconds, real, flops = [], 0.0, 0, 0.0
    for i, (cells, batch) in enumerate(zip(batches, collated, strict=True)):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = mlm_loss(model, _to(batch, device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            seconds += time.perf_counter() - start
            lengths = [len(c["input_ids"]) for c in cells]
            real += sum(lengths)
            flops += model_flops(model, lengths, int(batch["masked_labels"].numel()))
        losses.append(float(loss.detach()))
    dtype = torch.bfloat16 if bf16 else torch.float32
    dropout = model.config.attention_probs_dropout_prob
    out = {
        "real_tokens_per_s": round(real / seconds, 1),
        "step_ms": round(1000 * seconds / (len(batches) - warmup), 2),
        "model_tflops_per_s": float(f"{flops / seconds / 1e12:.4g}"),
        "loss_first_step": round(losses[0], 4),
        "loss_last_step": round(losses[-1], 4),
        "packed_backend": (
            packed_attention_backend(device, dtype, dropout)
            if "cu_seqlens" in collated[0]
            else None
        ),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


@torch.inference_mode()
def embed_throughput(model, cells, *, device, bf16, cells_per_batch: int) -> dict:
    """Cells/s of an eval forward + mean pooling: length-sorted padded batches vs packed rows."""
    from stformer_collate import BatchForm, flatten_examples, pad_examples
    from stformer_collate._layout import layout_packed

    model.eval()
    encoder = model.bert
    out = {}
    order = np.argsort([-len(c["input_ids"]) for c in cells], kind="stable")
    sorted_cells = [cells[i] for i in order]
    for form in (BatchForm.PADDED, BatchForm.PACKED):
        batches = []
        for s in range(0, len(cells), cells_per_batch):
            chunk = (sorted_cells if form is BatchForm.PADDED else cells)[s : s + cells_per_batch]
            if form is BatchForm.PADDED:
                batches.append(pad_examples(chunk, pad_id=0, pad_to_multiple_of=8))
            else:
                flat = flatten_examples(chunk)
                batches.append(layout_packed(flat, {"input_ids": flat.ids}))
        for _rep in range(2):  # the first pass warms up
            _sync(device)
            start = time.perf_counter()
            for batch in batches:
                b = _to(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    if form is BatchForm.PADDED:
                        hidden = encoder(
                            input_ids=b["input_ids"], attention_mask=b["attention_mask"]
                        ).last_hidden_state
                        m = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                        pooled = (hidden * m).sum(1) / m.sum(1)
                    else:
                        hidden = encoder(
                            input_ids=b["input_ids"],
                            position_ids=b["position_ids"],
                            cu_seq_lens_q=b["cu_seqlens"],
                            cu_seq_lens_k=b["cu_seqlens"],
                            max_length_q=b["max_seqlen"],
                            max_length_k=b["max_seqlen"],
                        ).last_hidden_state[0]
                        seq = b["seq_idx"][0].long()
                        sums = torch.zeros(
                            int(b["seq_lengths"].numel()), hidden.shape[-1], device=device
                        )
                        sums.index_add_(0, seq, hidden.float())
                        pooled = sums / b["seq_lengths"].to(device).unsqueeze(-1)
                pooled.float().cpu()
            _sync(device)
            seconds = time.perf_counter() - start
        out[f"{form.value}_cells_per_s"] = round(len(cells) / seconds, 1)
    return out


def matmul_tflops(device) -> float | None:
    """bf16 TFLOP/s of an 8,192^3 matrix product (mean of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return round(10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1)


def profile_packed(model, batches, *, device, bf16, collate, top: int = 12) -> list[dict]:
    """The ``top`` CUDA kernels (self time) of a few packed training steps."""
    from torch.profiler import ProfilerActivity, profile

    from stformer_train.models import mlm_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    collated = [collate(b) for b in batches]
    model.train()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in collated:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = mlm_loss(model, _to(batch, device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    events = prof.key_averages()

    def self_time(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    total = sum(self_time(e) for e in events) or 1.0
    rows = sorted(events, key=self_time, reverse=True)[:top]
    return [
        {
            "name": e.key[:90],
            "self_ms_per_step": round(self_time(e) / 1000 / len(collated), 3),
            "share": round(self_time(e) / total, 3),
            "calls_per_step": round(e.count / len(collated), 1),
        }
        for e in rows
    ]


def parity_check(device, *, bf16: bool, vocab: int, seed: int) -> dict:
    """Packed against padded on ``device``: eval loss and gradients of a small model, per backend.

    Mixed lengths (1 to 300 tokens); each backend that fails is reported with its error.
    """
    from stformer_collate import BatchForm, DataCollatorForMLM, SimpleTokenSpec
    from stformer_train import ModelConfig
    from stformer_train.models import (
        bert_config_from,
        build_mlm_model,
        mlm_loss,
        use_packed_backend,
    )

    spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=vocab)
    rng = np.random.default_rng(seed)
    cells = [{"input_ids": rng.integers(2, vocab, size=n)} for n in (300, 1, 57, 128, 9, 211)]
    shape = ModelConfig(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=256)
    model = build_mlm_model(bert_config_from(shape, vocab_size=vocab), seed=seed)
    model = model.to(device).eval()

    def loss_and_grads(form):
        batch = DataCollatorForMLM(spec=spec, seed=seed, form=form, return_masked_positions=True)(
            cells
        )
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = mlm_loss(model, _to(batch, device))[0]
        loss.backward()
        return float(loss), torch.cat([p.grad.flatten().float() for p in model.parameters()])

    ref_loss, ref_grad = loss_and_grads(BatchForm.PADDED)
    out: dict = {"padded_loss": round(ref_loss, 6), "bf16": bf16}
    backends = ("blocks", "nested", "varlen") if device.type == "cuda" else ("blocks",)
    for backend in backends:
        try:
            with use_packed_backend(backend):
                loss, grad = loss_and_grads(BatchForm.PACKED)
            out[backend] = {
                "loss_abs_diff": float(f"{abs(loss - ref_loss):.3g}"),
                "grad_rel_diff": float(
                    f"{float((grad - ref_grad).norm() / ref_grad.norm().clamp(min=1e-30)):.3g}"
                ),
            }
        except Exception as exc:  # noqa: BLE001 - report every backend's outcome
            out[backend] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


def _setup_plan(args, name: str):
    if name not in SHAPES:
        sys.exit(f"--shapes: unknown {name!r}; choose from {sorted(SHAPES)}")
    layers, hidden, heads, ffn, length, per_step = SHAPES[name]
    return layers, hidden, heads, ffn, length, args.cells_per_step or per_step


def run_device(args) -> dict:
    from stformer_collate import BatchForm, DataCollatorForMLM, SimpleTokenSpec
    from stformer_train import ModelConfig
    from stformer_train.models import bert_config_from, build_mlm_model

    device = torch.device(args.device)
    bf16 = device.type == "cuda" or args.bf16
    spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=args.vocab)
    report: dict = {
        "benchmark": "train",
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda" and torch.cuda.is_available()
            else str(device)
        ),
        "torch": torch.__version__,
        "bf16_autocast": bf16,
        "peak_tflops": args.peak_tflops,
        "flop_formula": FLOP_FORMULA,
        "mfu_formula": "model FLOPs per step / step time / (peak_tflops * 1e12)",
        "cells": "synthetic: lognormal(median 1200, sigma 0.6) genes, clipped to [64, input size]",
        "steps": args.steps,
        "warmup": args.warmup,
    }
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is required by stformer_train
        pass
    if not args.dry_run:
        report["matmul_bf16_tflops_measured"] = matmul_tflops(device)
        report["parity"] = {
            precision: parity_check(device, bf16=flag, vocab=args.vocab, seed=args.seed)
            for precision, flag in (("fp32", False), ("bf16", True))
            if flag is False or bf16
        }
    rng = np.random.default_rng(args.seed)
    for name in args.shapes.split(","):
        layers, hidden, heads, ffn, length, per_step = _setup_plan(args, name)
        n_steps = args.warmup + args.steps
        cells = synthetic_cells(per_step * n_steps, length, args.vocab, rng)
        random_batches = [cells[s : s + per_step] for s in range(0, len(cells), per_step)]
        grouped = grouped_batches(cells, per_step, rng)
        lengths = np.array([len(c["input_ids"]) for c in cells])
        shape = ModelConfig(
            num_layers=layers,
            hidden_size=hidden,
            num_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=length,
        )
        config = bert_config_from(shape, vocab_size=args.vocab, pad_token_id=0)
        entry: dict = {
            "model": f"bert {layers}x{hidden}, {heads} heads, ffn {ffn}, input {length}",
            "cells_per_step": per_step,
            "mean_length": round(float(lengths.mean()), 1),
            "truncated_fraction": round(float((lengths == length).mean()), 3),
            "padding_fraction_padded": round(1 - float(lengths.mean()) / length, 3),
            "attention_dropout": config.attention_probs_dropout_prob,
        }
        report[name] = entry
        if args.dry_run:
            continue

        def collator(form, pad_to=None):
            mlm = DataCollatorForMLM(
                spec=spec,
                seed=args.seed,
                form=form,
                return_masked_positions=True,
                pad_to_multiple_of=8 if form == BatchForm.PADDED else None,
            )
            if pad_to is None:
                return mlm
            return lambda examples: pad_batch(mlm(examples), pad_to, spec.pad_id)

        setups = {
            "padded": (random_batches, collator(BatchForm.PADDED, pad_to=length), {}),
            "length_grouped": (grouped, collator(BatchForm.PADDED), {}),
            "packed": (random_batches, collator(BatchForm.PACKED), {}),
        }
        if config.attention_probs_dropout_prob > 0:
            setups["packed_no_attn_dropout"] = (
                random_batches,
                collator(BatchForm.PACKED),
                {"attention_probs_dropout_prob": 0.0},
            )
        for setup, (batches, collate, overrides) in setups.items():
            try:
                cfg = bert_config_from(shape, vocab_size=args.vocab, pad_token_id=0, **overrides)
                model = build_mlm_model(cfg, seed=args.seed).to(device)
                result = train_setup(
                    model, batches, device=device, bf16=bf16, warmup=args.warmup, collate=collate
                )
                result["mfu"] = float(f"{result['model_tflops_per_s'] / args.peak_tflops:.4g}")
                measured = report.get("matmul_bf16_tflops_measured")
                if measured:
                    result["mfu_vs_measured_matmul"] = float(
                        f"{result['model_tflops_per_s'] / measured:.4g}"
                    )
                if setup == "packed":
                    entry["embed"] = embed_throughput(
                        model,
                        cells[: args.embed_cells],
                        device=device,
                        bf16=bf16,
                        cells_per_batch=args.embed_batch,
                    )
                    if (
                        args.profile
                        and device.type == "cuda"
                        and name == args.shapes.split(",")[-1]
                    ):
                        entry["profile_packed"] = profile_packed(
                            model, random_batches[:3], device=device, bf16=bf16, collate=collate
                        )
            except Exception as exc:  # noqa: BLE001 - one failing setup must not hide the others
                result = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            entry[setup] = result
            print(f"{name} {setup}: {result}", file=sys.stderr, flush=True)
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tps = {k: v.get("real_tokens_per_s") for k, v in entry.items() if isinstance(v, dict)}
        if tps.get("packed") and tps.get("length_grouped"):
            entry["speedup_packed_over_grouped"] = round(tps["packed"] / tps["length_grouped"], 2)
        if tps.get("packed") and tps.get("padded"):
            entry["speedup_packed_over_padded"] = round(tps["packed"] / tps["padded"], 2)
    v2 = report.get("v2", {})
    mfus = [v2[k]["mfu"] for k in ("packed", "packed_no_attn_dropout") if "mfu" in v2.get(k, {})]
    if mfus:
        report["target_v2_mfu_ge_0.35"] = max(mfus) >= 0.35
    return report


def write_out(report: dict, name: str) -> None:
    """Print the JSON line; also write it to ``$OUT/<name>`` (atomically) when ``$OUT`` is set."""
    line = json.dumps(report)
    print(line, flush=True)
    out = os.environ.get("OUT")
    if not out:
        return
    try:
        from stformer_data.atomic import atomic_write_text
    except ImportError:  # the GPU image has no anndata: load the stand-alone module by its path
        import importlib.util

        path = (
            Path(__file__).resolve().parents[1]
            / "packages/stformer-data/src/stformer_data/atomic.py"
        )
        spec = importlib.util.spec_from_file_location("_stformer_atomic", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        atomic_write_text = module.atomic_write_text
    atomic_write_text(Path(out) / name, line + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (real cells) or cuda (synthetic)")
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="run the GPU code path (synthetic cells) on --device",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (cpu 8, cuda 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="cells per step (cpu path)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setups", default="a,b,c,d", help="cpu: which of a (naive), b (grouped), c, d (packed)"
    )
    parser.add_argument("--shapes", default="v1,v2", help=f"gpu: comma list of {sorted(SHAPES)}")
    parser.add_argument("--warmup", type=int, default=3, help="gpu: untimed steps first")
    parser.add_argument("--cells-per-step", type=int, default=None, help="gpu: override per shape")
    parser.add_argument("--vocab", type=int, default=25426, help="gpu: vocabulary size")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak, TFLOP/s")
    parser.add_argument("--embed-cells", type=int, default=1024)
    parser.add_argument("--embed-batch", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast off cuda too")
    parser.add_argument("--profile", action="store_true", help="gpu: top kernels of packed steps")
    args = parser.parse_args(argv)
    synthetic = args.synthetic or args.device != "cpu"
    if args.steps is None:
        args.steps = 20 if synthetic else 8
    for name in ("steps", "batch_size", "threads", "embed_cells", "embed_batch"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.warmup < 0 or (args.cells_per_step is not None and args.cells_per_step <= 0):
        parser.error("--warmup must be >= 0 and --cells-per-step > 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available() and not args.dry_run:
        parser.error("--device cuda: torch sees no CUDA device")
    args.synthetic = synthetic
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.synthetic:
        write_out(run_device(args), "train_cuda.json")
    else:
        write_out(run_cpu(args), "train.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
