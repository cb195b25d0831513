import pytest
import torch

from stformer_train.early_stopping import PatienceStopping


def test_patience_and_min_delta():
    es = PatienceStopping(monitor="eval_loss", patience=2, min_delta=0.1)
    assert es.update(1.0) and not es.update(0.95) and not es.should_stop
    assert es.update(0.8) and es.wait == 0
    es.update(0.79)
    es.update(0.75)
    assert es.should_stop and es.best == 0.8


def test_saves_best_model(tmp_path):
    es = PatienceStopping(patience=1, checkpoint_path=tmp_path / "best")
    lin = torch.nn.Linear(2, 2)
    es.update(1.0, model=lin)
    assert (tmp_path / "best" / "state_dict.pt").is_file()


@pytest.mark.parametrize("kw", [{"patience": 0}, {"min_delta": -1.0}, {"monitor": ""}])
def test_validation(kw):
    with pytest.raises(ValueError):
        PatienceStopping(**kw)
