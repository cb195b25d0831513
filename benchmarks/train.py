"""Benchmark: pretraining throughput, naive padding vs length grouping vs stformer's default.

Tokenizes real cells from ``../shared/data`` (PBMC and cortex culture, Geneformer's 30M token
dictionary and medians, up to 2,048 tokens), draws ``steps x batch`` cells, and trains the same
6-layer, 256-wide BERT (4 heads, intermediate 512, SDPA) on the same batches and masks with

* (a) ``naive``: every sequence padded to 2,048, logits at every position;
* (b) ``length_grouped``: batches grouped by length, padded to the longest (Geneformer's setup),
  logits at every position;
* (c) ``stformer``: (b) plus logits only at the masked positions (``masked_positions``); on a GPU
  with flash-attention, packed batches without padding.

It reports real (non-pad) tokens per second, the ratios (c)/(a) and (c)/(b), and the loss after
the last step (the three compute the same function, so the losses agree up to float noise). The
setups take their steps in turn (step 1 of a, b, c, then step 2, ...), so that other load on a
shared machine slows all three alike.
Prints one JSON line. Usage: ``uv run python benchmarks/train.py [--steps 8] [--batch-size 8]``:
about 9 minutes on 2 idle cores (fewer steps draw fewer cells, and the ratios swing with the
longest cell drawn); batch 8 padded to 2,048 peaks near 18 GB of RAM, ``--batch-size 4`` about
half of that.
"""

from __future__ import annotations

import _common  # must come first: see benchmarks/_common.py

# isort: split

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FILES = ("sc/pbmc10k_protein_v3_200_scvi.h5ad", "sc/cxg_cortex_culture_hvg2000_counts.h5ad")


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

    def step(self, examples) -> None:
        start = time.perf_counter()
        batch = self.collate(examples)
        if self.pad_to is not None:
            batch = pad_batch(batch, self.pad_to, self.collate.spec.pad_id)
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
    out = dict(batch)
    n, cur = batch["input_ids"].shape
    for key, fill in (("input_ids", pad_id), ("labels", -100), ("attention_mask", 0)):
        padded = torch.full((n, length), fill, dtype=batch[key].dtype)
        padded[:, :cur] = batch[key]
        out[key] = padded
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setups", default="a,b,c", help="which of a (naive), b (grouped), c (stformer) to run"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from stformer_collate import DataCollatorForMLM
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
            lambda: Setup(
                fresh(),
                DataCollatorForMLM(spec=vocab, seed=args.seed, return_masked_positions=True),
                sparse_loss,
                seed=args.seed,
            ),
        ),
    }
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
    print(
        json.dumps(
            {
                "benchmark": "train",
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "threads": args.threads,
                "model": "bert 6x256, 4 heads, ffn 512, sdpa",
                "vocab": len(vocab),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "cells_available": len(seqs),
                "mean_length": round(float(np.mean(lengths)), 1),
                "max_length": int(max(lengths)),
                **results,
                "speedup_c_over_a": round(c / a, 2) if a and c else None,
                "speedup_c_over_b": round(c / b, 2) if b and c else None,
                "targets_met": bool(c >= 3 * a and c >= 1.5 * b) if a and b and c else None,
            }
        )
    )


if __name__ == "__main__":
    main()
