"""The streaming datasets of ``stformer_data.torch`` under a plain ``transformers.Trainer``.

Issue 4 promises "a dataset form the Hugging Face Trainer accepts": ``H5adCellDataset`` (tokens
made on the fly from an h5ad) and ``CorpusStreamDataset(yield_batches=False)`` (a tokenized
corpus) yield one example per cell; the Trainer batches them with an MLM collator. These tests run
a tiny model for ``max_steps`` and check every batch the Trainer fed to the model.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import Trainer, TrainingArguments

import stformer_data as sd
from stformer_collate import DataCollatorForMLM
from stformer_data.torch import CorpusStreamDataset, H5adCellDataset
from stformer_train.models import bert_config_from, build_mlm_model

BATCH = 8


class _RecordingTrainer(Trainer):
    """A Trainer that keeps a copy of every batch it trains on (what the model really saw)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, torch.Tensor]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append({k: v.detach().cpu().clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)


def _train(dataset, vocab, tiny, out, max_steps, workers=0):
    model = build_mlm_model(
        bert_config_from(tiny, vocab_size=len(vocab), pad_token_id=vocab.pad_id), seed=0
    )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=workers,
        seed=0,
    )
    trainer = _RecordingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForMLM(spec=vocab, seed=0),
    )
    result = trainer.train()
    return trainer, result


def _originals(batch, vocab) -> list[tuple[int, ...]]:
    """Check one batch is well formed; return its cells' original (unmasked) token sequences."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.dtype == labels.dtype == torch.int64
    assert ids.shape == labels.shape == mask.shape and ids.shape[0] <= BATCH
    lengths = mask.sum(dim=1)
    width = ids.shape[1]
    # right padding: the mask is a prefix of ones, and pad / ignore everywhere after it
    assert torch.equal(mask, (torch.arange(width) < lengths[:, None]).to(mask.dtype))
    assert int(lengths.max()) == width and int(lengths.min()) >= 1
    assert (ids[mask == 0] == vocab.pad_id).all() and (labels[mask == 0] == -100).all()
    assert int(ids.min()) >= 0 and int(ids.max()) < len(vocab)
    targets = labels != -100
    assert targets.any(dim=1).all(), "every cell has at least one prediction target"
    assert not torch.isin(labels[targets], torch.tensor(sorted(vocab.special_ids))).any()
    original = torch.where(targets, labels, ids)
    return [tuple(original[r, : lengths[r]].tolist()) for r in range(ids.shape[0])]


def _check_epochs(trainer, corpus, n_cells):
    """The first ceil(n/BATCH) batches hold every cell once; the next epoch starts in a new order."""
    per_epoch = -(-n_cells // BATCH)
    want = Counter(tuple(s) for s in corpus.dataset["input_ids"])
    cells = [_originals(b, corpus.vocab) for b in trainer.seen]
    first = Counter(seq for batch in cells[:per_epoch] for seq in batch)
    assert first == want, "one epoch = every tokenized cell exactly once"
    second = cells[per_epoch:]
    assert second and all(len(b) == BATCH for b in second)
    assert Counter(s for b in second for s in b) <= want
    assert second[0] != cells[0], "set_epoch: the Trainer's next epoch has a new order"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_trains_from_h5ad_with_on_the_fly_tokens(
    tiny_h5ad, tiny_corpus, tiny, tmp_path, workers
):
    # the same vocabulary, medians and tokenizer settings as the tokenized corpus fixture
    medians = sd.compute_medians_exact([tiny_h5ad])
    tokenizer = sd.RankValueTokenizer(
        tiny_corpus.vocab, medians, sd.RankTokenizerConfig(model_input_size=48)
    )
    # shuffle buffers of 4 batches, so that with 2 DataLoader workers both read (whole batches)
    dataset = H5adCellDataset(
        [tiny_h5ad],
        tokenizer=tokenizer,
        batch_size=BATCH,
        strategy=sd.BlockShuffleStrategy(block_size=4, buffer_size=4 * BATCH),
        rank=0,
        world_size=1,
        seed=1,
    )
    n_cells = len(dataset)
    assert n_cells == len(tiny_corpus.dataset) == 120
    max_steps = n_cells // BATCH + 3
    trainer, result = _train(dataset, tiny_corpus.vocab, tiny, tmp_path, max_steps, workers)
    assert result.global_step == max_steps == len(trainer.seen)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == max_steps and all(torch.isfinite(torch.tensor(losses)))
    _check_epochs(trainer, tiny_corpus, n_cells)


@pytest.mark.slow
def test_trainer_trains_from_a_tokenized_corpus_stream(tiny_corpus, tiny, tmp_path):
    dataset = CorpusStreamDataset(
        tiny_corpus.path,
        batch_size=BATCH,
        yield_batches=False,
        length_bucketing=True,
        rank=0,
        world_size=1,
    )
    n_cells = len(dataset)
    max_steps = -(-n_cells // BATCH) + 2
    trainer, result = _train(dataset, tiny_corpus.vocab, tiny, tmp_path, max_steps)
    assert result.global_step == max_steps == len(trainer.seen)
    _check_epochs(trainer, tiny_corpus, n_cells)
