"""An stFormer pretraining script, ported to stformer by changing one import line.

Everything below ``# --- the ported script ---`` is written from stFormer's two API documents
(signatures and examples as printed there); only the import line differs. The data preparation
above it stands in for the user's own tokenization (the documents take a tokenized Hugging Face
dataset, a token dictionary pickle and an example-lengths pickle as given).

    uv run python examples/port_stformer.py OUT                 # spot, neighborhood, both searches
    uv run python examples/port_stformer.py OUT --deepspeed     # the spot run with deepspeed=True
    uv run torchrun --nproc_per_node 2 examples/port_stformer.py OUT --deepspeed   # 2 processes

It is kept tiny (a few training steps) so that the test suite runs it too.
"""

from __future__ import annotations

import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def prepare(out: Path, h5ad: Path, mode: str) -> tuple[str, str, str]:
    """Tokenize one h5ad file into (dataset folder, token dictionary pickle, lengths pickle)."""
    import stformer_data as sd

    corpus_dir = out / f"corpus_{mode}"
    if not (corpus_dir / "manifest.json").is_file():
        adata = sd.open_h5ad(h5ad, backed=False)
        vocab = sd.GeneVocab.from_genes(sd.resolve_gene_ids(adata.var))
        sd.tokenize_files(
            [h5ad],
            corpus_dir,
            vocab=vocab,
            medians=sd.compute_medians_exact([h5ad]),
            config=sd.TokenizeConfig(mode=mode, rank=sd.RankTokenizerConfig(model_input_size=16)),
            progress=False,
        )
    return (
        str(corpus_dir / "dataset"),
        str(corpus_dir / "token_dictionary.pkl"),
        str(corpus_dir / "example_lengths.pkl"),
    )


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    deepspeed_only = "--deepspeed" in argv
    spot = prepare(out, DATA / "sc" / "pbmc68k_reduced_700_counts.h5ad", "spot")
    hood = prepare(out, DATA / "spatial" / "mouse_cortex_ccc_1073_orgaccc.h5ad", "neighborhood")

    # --- the ported script ----------------------------------------------------------------------
    # from stformer_pretrainer import PretrainML             # stFormer's import line
    from stformer_train.hf import PretrainML  # the one line changed

    tiny = dict(
        num_layers=2,
        num_heads=2,
        embed_dim=32,
        max_input=16,
        batch_size=16,
        warmup_steps=0,
        epochs=1,
        disable_tqdm=True,
        training_args_overrides={"max_steps": 4, "logging_steps": 2},
    )
    if deepspeed_only:
        ml = PretrainML(*spot, "spot", str(out / "deepspeed"), deepspeed=True, **tiny)
        ml.run_pretraining()
        print("deepspeed run:", ml.run_name)
        return 0

    ml = PretrainML(*spot, "spot", str(out / "spot"), **tiny)
    ml.run_pretraining()
    print("spot run:", ml.run_name)

    ml = PretrainML(*hood, "neighborhood", str(out / "neighborhood"), **tiny)
    ml.run_pretraining()
    print("neighborhood run:", ml.run_name)

    search_space = {
        "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "batch_size": {"type": "categorical", "values": [8, 16]},
    }
    for backend in ("ray", "optuna"):
        ml = PretrainML(
            *spot,
            "spot",
            str(out / f"search_{backend}"),
            **dict(
                tiny, training_args_overrides={"max_steps": 2, "eval_steps": 1, "logging_steps": 1}
            ),
        )
        ml.run_hyperparameter_train(search_space, {"cpu": 1}, n_trials=2, backend=backend)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
