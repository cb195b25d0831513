"""Benchmark: MLM collation throughput, native collator forms vs transformers' collator.

Tokenizes real cells from ``../shared/data`` (rank-value, with ``<cls>``), then times collating
the same shuffled batches with

* transformers' ``DataCollatorForLanguageModeling`` over ``PreCollator`` (the stFormer
  setup), and
* ``stformer_collate.DataCollatorForMLM`` in the padded and packed forms, each with and without
  the masked-only positions,

and reports batches per second, the ratio to the transformers path and the fraction of padding
each form leaves. Prints one JSON line.

Usage: ``uv run python benchmarks/collate.py [--batch-size 16] [--seconds 3]``
"""

from __future__ import annotations

import _common  # must come first: see benchmarks/_common.py

# isort: split

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FILES = ("sc/pbmc10k_protein_v3_200_scvi.h5ad", "sc/cxg_cortex_culture_hvg2000_counts.h5ad")


def tokenize(files: list[Path], workdir: Path) -> tuple[list[dict], object]:
    """Rank-value tokenize ``files`` with a vocabulary of their own gene ids; return the rows."""
    from stformer_data import (
        GeneVocab,
        RankTokenizerConfig,
        TokenizeConfig,
        compute_medians_exact,
        open_h5ad,
        resolve_gene_ids,
        tokenize_files,
    )

    genes: list[str] = []
    for f in files:
        adata = open_h5ad(f)
        try:
            genes.extend(resolve_gene_ids(adata.var, gene_id_key=None, path=f))
        finally:
            adata.file.close()
    vocab = GeneVocab.from_genes(genes, cls_token=True)
    medians = compute_medians_exact(files)
    config = TokenizeConfig(rank=RankTokenizerConfig(add_cls=True))
    corpus = tokenize_files(
        files, workdir / "corpus", vocab=vocab, medians=medians, config=config, progress=False
    )
    columns = corpus.dataset.select_columns(["input_ids", "length"]).to_dict()
    rows = [
        {"input_ids": ids, "length": n}
        for ids, n in zip(columns["input_ids"], columns["length"], strict=True)
    ]
    return rows, vocab


def throughput(collate, batches, seconds: float) -> float:
    """Batches per second over repeated passes (at least one full pass and ``seconds``)."""
    collate(batches[0])  # warm-up
    done = 0
    start = time.perf_counter()
    while True:
        for batch in batches:
            collate(batch)
            done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def token_counts(outputs: list[dict]) -> tuple[int, int, int]:
    """Real tokens, token slots (real + padding) and selected (masked) tokens."""
    real = total = selected = 0
    for out in outputs:
        ids = out["input_ids"]
        total += ids.numel()
        real += int(out["attention_mask"].sum()) if "attention_mask" in out else ids.numel()
        selected += int((out["labels"] != -100).sum())
    return real, total, selected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per collator")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import DataCollatorForLanguageModeling

    from stformer_collate import BatchForm, DataCollatorForMLM, PreCollator

    data = _common.shared_data()
    with tempfile.TemporaryDirectory() as tmp:
        rows, vocab = tokenize([data / f for f in FILES], Path(tmp))
    order = np.random.default_rng(0).permutation(len(rows))
    bs = args.batch_size
    batches = [[rows[i] for i in order[s : s + bs]] for s in range(0, len(order) - bs + 1, bs)]

    pre = PreCollator(vocab)
    collators = {
        "transformers": DataCollatorForLanguageModeling(
            tokenizer=pre, mlm_probability=0.15, seed=0
        ),
        "padded": DataCollatorForMLM(spec=vocab, form=BatchForm.PADDED, seed=0),
        "packed": DataCollatorForMLM(spec=vocab, form=BatchForm.PACKED, seed=0),
        "padded_masked_only": DataCollatorForMLM(
            spec=vocab, form=BatchForm.PADDED, return_masked_positions=True, seed=0
        ),
        "packed_masked_only": DataCollatorForMLM(
            spec=vocab, form=BatchForm.PACKED, return_masked_positions=True, seed=0
        ),
    }
    # Interleave the collators over several rounds and keep each one's median rate, so a noisy
    # neighbour on a shared machine does not favour whichever ran at a quiet moment.
    samples: dict[str, list[float]] = {name: [] for name in collators}
    for _ in range(args.rounds):
        for name, collate in collators.items():
            samples[name].append(throughput(collate, batches, args.seconds / args.rounds))
    rates = {name: float(np.median(v)) for name, v in samples.items()}
    pads, mask_rates = {}, {}
    for name, collate in collators.items():  # one untimed pass for the token counts
        real, total, selected = token_counts([collate(batch) for batch in batches])
        pads[name] = round(1.0 - real / total, 4)
        mask_rates[name] = round(selected / real, 4)
    base = rates["transformers"]
    lengths = np.array([r["length"] for r in rows])
    result = {
        "benchmark": "collate",
        "files": list(FILES),
        "cells": len(rows),
        "batch_size": bs,
        "rounds": args.rounds,
        "batches": len(batches),
        "mean_length": round(float(lengths.mean()), 1),
        "max_length": int(lengths.max()),
        "batches_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_transformers": {
            k: round(v / base, 2) for k, v in rates.items() if k != "transformers"
        },
        "padding_fraction": pads,
        "masked_fraction_of_real_tokens": mask_rates,
        "target_2x_met": all(v / base >= 2 for k, v in rates.items() if k != "transformers"),
        "packed_zero_padding": pads["packed"] == 0.0,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
