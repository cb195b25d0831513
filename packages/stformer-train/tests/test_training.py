import torch

from stformer_collate import DataCollatorForMLM, SimpleTokenSpec
from stformer_train.training import (
    EpochLengthGroupedSampler,
    StepSeededCollator,
    plot_loss_curve,
    write_csv_log,
)

SPEC = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=80)
EX = [{"input_ids": list(range(2, 60))}] * 4


def test_step_seeded_collator_replays_after_resume():
    c = StepSeededCollator(DataCollatorForMLM(spec=SPEC, seed=0), seed=5)
    first = [c(EX)["labels"] for _ in range(3)]
    assert not torch.equal(first[0], first[1])
    c.step = 2
    assert torch.equal(c(EX)["labels"], first[2])


def test_sampler_is_reproducible_per_epoch():
    lengths = [(i * 13) % 50 + 1 for i in range(64)]
    s = EpochLengthGroupedSampler(8, lengths, seed=1)
    e0 = list(s)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0 and sorted(s) == list(range(64))


def test_csv_and_png(tmp_path):
    history = [{"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2}, {"eval_loss": 2.6, "step": 2}]
    csv = write_csv_log(history, tmp_path / "m.csv").read_text().splitlines()
    assert csv[0].startswith("step") and len(csv) == 4
    assert plot_loss_curve(history, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
