"""stFormer's DeepSpeed API as its documents print it: ``build_deepspeed`` (17 parameters) and
``PretrainML(deepspeed=True)``, in one process and as the 2-process acceptance script.

Written from ``../shared/seeds/000_80bf747b479ccc1e.txt``; the import line is the one change.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig, TrainingArguments

from stformer_train.hf import build_deepspeed

ROOT = Path(__file__).resolve().parents[3]
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launcher(monkeypatch):
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)


def test_build_deepspeed_uses_its_17_parameters(tmp_path, no_launcher):
    args = build_deepspeed(
        output_dir=tmp_path / "out",
        logging_dir=tmp_path / "logs",
        train_dataset_length=640,
        batch_size=8,
        learning_rate=5e-4,
        epochs=2,
        weight_decay=0.01,
        warmup_steps=7,
        lr_scheduler_type="WarmupDecayLR",
        optimizer_type="AdamW",
        do_train=True,
        do_eval=False,
        length_column_name="length",
        disable_tqdm=True,
        fp16=False,
        group_by_length=True,
        overrides=None,
    )
    assert isinstance(args, TrainingArguments)
    ds = args.hf_deepspeed_config.config
    assert ds["optimizer"]["type"] == "AdamW" and ds["scheduler"]["type"] == "WarmupDecayLR"
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["optimizer"]["params"]["lr"] == 5e-4
    assert ds["optimizer"]["params"]["weight_decay"] == 0.01
    assert args.warmup_steps == 7  # DeepSpeed's "auto" warm-up is filled from it by the Trainer
    assert args.train_sampling_strategy == "group_by_length"
    with pytest.raises(ValueError):
        build_deepspeed(
            tmp_path,
            tmp_path,
            64,
            8,
            1e-3,
            1,
            0.0,
            0,
            "linear",
            "no-such-optimizer-xyz",
            True,
            False,
            "length",
            True,
            False,
            False,
        )


@pytest.fixture(scope="module")
def spot(shared_data, tmp_path_factory):
    import stformer_data as sd

    h5ad = shared_data / "sc/pbmc68k_reduced_700_counts.h5ad"
    adata = sd.open_h5ad(h5ad, backed=False)
    c = sd.tokenize_files(
        [h5ad],
        tmp_path_factory.mktemp("spot") / "c",
        vocab=sd.GeneVocab.from_genes(sd.resolve_gene_ids(adata.var)),
        medians=sd.compute_medians_exact([h5ad]),
        config=sd.TokenizeConfig(rank=sd.RankTokenizerConfig(model_input_size=16)),
        progress=False,
    )
    return (
        str(c.path / "dataset"),
        str(c.path / "token_dictionary.pkl"),
        str(c.path / "example_lengths.pkl"),
    )


_ONE_PROCESS = """
import sys
from stformer_train.hf import PretrainML

ml = PretrainML(*sys.argv[1:4], "spot", sys.argv[4], deepspeed=True, num_layers=2, num_heads=2,
                embed_dim=32, max_input=16, batch_size=16, warmup_steps=0, disable_tqdm=True,
                fp16=False, training_args_overrides={"max_steps": 2})
ml.run_pretraining()
assert ml.trainer.is_deepspeed_enabled and ml.trainer.state.global_step == 2
print("trained on deepspeed")
"""


@pytest.mark.slow
@pytest.mark.shared_data
def test_pretrainml_deepspeed_true_trains_on_deepspeed(spot, tmp_path):
    # its own process: DeepSpeed keeps process groups in module globals, which a later
    # DeepSpeed engine in the same pytest process would find stale
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", _ONE_PROCESS, *spot, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "trained on deepspeed" in proc.stdout
    (model_dir,) = tmp_path.glob("models/*/models")
    cfg = BertConfig.from_pretrained(model_dir)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.max_position_embeddings) == (2, 32, 16)
    with open(model_dir / "token_dictionary.pkl", "rb") as fh:
        assert len(pickle.load(fh)) == cfg.vocab_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.shared_data
def test_acceptance_script_deepspeed_on_two_processes(shared_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    script = ROOT / "examples" / "port_stformer.py"
    # the corpora are prepared once, in one process, before the launch
    prep = [
        sys.executable,
        "-c",
        f"import runpy,sys; sys.argv=['x']; m=runpy.run_path({str(script)!r}); "
        f"[m['prepare'](__import__('pathlib').Path({str(tmp_path)!r}), p, mode) for p, mode in "
        f"[(m['DATA']/'sc'/'pbmc68k_reduced_700_counts.h5ad','spot'), "
        f"(m['DATA']/'spatial'/'mouse_cortex_ccc_1073_orgaccc.h5ad','neighborhood')]]",
    ]
    subprocess.run(prep, env=env, check=True, timeout=300)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(tmp_path),
        "--deepspeed",
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    assert "mpi4py" not in out and out.count("deepspeed run:") == 2
    (model_dir,) = (tmp_path / "deepspeed").glob("models/*/models")
    assert (model_dir / "model.safetensors").is_file()
    (ckpt,) = (tmp_path / "deepspeed").glob("models/*/checkpoint-4")
    shards = sorted(p.name for p in (ckpt / "global_step4").iterdir())
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards  # ZeRO over 2 ranks
