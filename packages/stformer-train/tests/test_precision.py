"""The one precision policy: what each requested mode resolves to on each kind of machine."""

import warnings

import pytest

import stformer_train.precision as precision_mod
from stformer_train import TrainConfig
from stformer_train.hf import precision_flags
from stformer_train.lightning import lightning_precision
from stformer_train.precision import Precision, resolve_precision

CPU, GPU_BF16, GPU_FP16_ONLY = (False, False), (True, True), (True, False)


@pytest.fixture
def machine(monkeypatch):
    def use(hardware):
        monkeypatch.setattr(precision_mod, "_hardware", lambda: hardware)

    return use


@pytest.mark.parametrize(
    ("hardware", "mode", "expected"),
    [
        (CPU, "auto", Precision.FP32),
        (CPU, "no", Precision.FP32),
        (GPU_BF16, "auto", Precision.BF16),
        (GPU_BF16, "bf16", Precision.BF16),
        (GPU_BF16, "fp16", Precision.FP16),
        (GPU_BF16, "no", Precision.FP32),
        (GPU_FP16_ONLY, "auto", Precision.FP16),
        (GPU_FP16_ONLY, "fp16", Precision.FP16),
    ],
)
def test_available_modes_resolve_without_a_warning(machine, hardware, mode, expected):
    machine(hardware)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision(mode) is expected


@pytest.mark.parametrize(
    ("hardware", "mode", "why"),
    [
        (CPU, "bf16", "no CUDA GPU"),
        (CPU, "fp16", "no CUDA GPU"),
        (GPU_FP16_ONLY, "bf16", "no bf16"),
    ],
)
def test_unavailable_modes_fall_back_to_fp32_with_one_warning(machine, hardware, mode, why):
    machine(hardware)
    with pytest.warns(RuntimeWarning, match=why) as record:
        assert resolve_precision(mode) is Precision.FP32
    assert len(record) == 1


def test_every_engine_spelling_comes_from_the_policy(machine):
    machine(GPU_BF16)
    for mode in ("auto", "no", "bf16", "fp16"):
        cfg = TrainConfig(mixed_precision=mode)
        resolved = resolve_precision(mode)
        assert precision_flags(cfg) == resolved.hf_flags
        assert lightning_precision(cfg) == resolved.lightning
    assert Precision.BF16.hf_flags == {"bf16": True, "fp16": False}
    assert Precision.FP16.hf_flags == {"bf16": False, "fp16": True}
    assert [p.lightning for p in Precision] == ["32-true", "bf16-mixed", "16-mixed"]


def test_unknown_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="auto, no, bf16, fp16.*'fp8'"):
        resolve_precision("fp8")
