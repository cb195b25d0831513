"""Benchmark: distributed pretraining on CPU, 1 and 2 workers, under DeepSpeed ZeRO-2 and Ray Train.

Simulates cells (``stformer_data.simulate_counts``), tokenizes them (rank-value, up to
``--max-length`` tokens) and pretrains the same small BERT with stformer's Hugging Face path
(``STFormerPretrainer``) for ``--steps`` steps of ``--batch-size`` cells per worker:

* ``deepspeed_zero2``: ``stformer pretrain --deepspeed zero2`` launched by ``torchrun`` with 1 and 2
  processes (gloo);
* ``ray_train``: :func:`stformer_dist.ray_pretrain_mlm` on a local Ray with 1 and 2 CPU workers.

For each it reports real (non-pad) tokens per second during training (the Trainer's
``train_runtime``), and the start-up overhead: the wall time of the whole run minus the training
time (process launch, imports, process group, DeepSpeed engine / Ray worker group, model build,
final save), plus the time of ``ray.init``. On a 2-core machine there is no speed-up to expect;
this is the baseline for scaling runs on bigger machines. Prints one JSON line.
Usage: ``uv run python benchmarks/dist.py [--steps 30] [--batch-size 16]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = "import sys\nfrom stformer_cli.main import cli\nsys.exit(cli(sys.argv[1:]))\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_runtime(run: Path) -> float:
    history = json.loads((run / "logs" / "log_history.json").read_text())
    return float(next(h["train_runtime"] for h in history if "train_runtime" in h))


def _make_corpus(root: Path, n_cells: int, max_length: int):
    import stformer_data as sd

    adata = sd.simulate_counts(n_cells=n_cells, n_genes=400, seed=0)
    adata.write_h5ad(root / "cells.h5ad")
    vocab = sd.GeneVocab.from_genes(sd.resolve_gene_ids(adata.var))
    medians = sd.compute_medians_exact([root / "cells.h5ad"])
    config = sd.TokenizeConfig(rank=sd.RankTokenizerConfig(model_input_size=max_length))
    return sd.tokenize_files(
        [root / "cells.h5ad"],
        root / "corpus",
        vocab=vocab,
        medians=medians,
        config=config,
        progress=False,
    )


def _deepspeed(root: Path, corpus: Path, n: int, args) -> dict:
    (root / "worker.py").write_text(WORKER)
    run = root / f"ds{n}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(root / "worker.py"),
        "pretrain",
        str(corpus),
        "--out",
        str(run),
        "--deepspeed",
        "zero2",
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--layers",
        str(args.layers),
        "--hidden",
        str(args.hidden),
        "--heads",
        "4",
        "--no-progress",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"deepspeed run with {n} processes failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return {"wall_s": wall, "train_s": _train_runtime(run)}


def _ray(root: Path, corpus: Path, n: int, args) -> dict:
    from stformer_dist import ray_pretrain_mlm
    from stformer_train import ModelConfig, TrainConfig

    run = root / f"ray{n}"
    model = ModelConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=4,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=max(args.max_length, 8),
    )
    train = TrainConfig(
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        save_steps=args.steps,
        logging_steps=max(1, args.steps // 3),
    )
    t0 = time.perf_counter()
    ray_pretrain_mlm(
        corpus,
        run,
        model=model,
        train=train,
        num_workers=n,
        is_gpu=False,
        storage_path=root / "ray_results",
        name=f"bench{n}",
    )
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "train_s": _train_runtime(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    with tempfile.TemporaryDirectory(prefix="stformer-bench-dist-") as tmp:
        root = Path(tmp)
        corpus = _make_corpus(root, args.cells, args.max_length)
        mean_len = sum(corpus.lengths) / len(corpus.lengths)
        out: dict = {
            "benchmark": "dist",
            "steps": args.steps,
            "batch_size_per_worker": args.batch_size,
            "mean_tokens_per_cell": round(mean_len, 1),
            "model": f"{args.layers}x{args.hidden}",
            "cpu_count": os.cpu_count(),
        }
        for n in (1, 2):
            r = _deepspeed(root, corpus.path, n, args)
            tokens = args.steps * args.batch_size * n * mean_len
            out[f"deepspeed_zero2_{n}w_tokens_per_s"] = round(tokens / r["train_s"], 1)
            out[f"deepspeed_zero2_{n}w_startup_s"] = round(r["wall_s"] - r["train_s"], 1)
        from stformer_dist import connect

        t0 = time.perf_counter()
        ray = connect(num_cpus=2, log_to_driver=False)  # worker logs stay out of the one JSON line
        out["ray_init_s"] = round(time.perf_counter() - t0, 1)
        try:
            for n in (1, 2):
                r = _ray(root, corpus.path, n, args)
                tokens = args.steps * args.batch_size * n * mean_len
                out[f"ray_train_{n}w_tokens_per_s"] = round(tokens / r["train_s"], 1)
                out[f"ray_train_{n}w_startup_s"] = round(r["wall_s"] - r["train_s"], 1)
        finally:
            ray.shutdown()
        for engine in ("deepspeed_zero2", "ray_train"):
            out[f"{engine}_2w_speedup"] = round(
                out[f"{engine}_2w_tokens_per_s"] / out[f"{engine}_1w_tokens_per_s"], 2
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
