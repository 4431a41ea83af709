"""Inference precision: float32 / bfloat16 / auto, for tissue models."""

from __future__ import annotations

import pytest
import torch

from pathseg.errors import PathsegError
from pathseg.models import precision as prec
from pathseg.tissue.model import TissueModel
from tests.test_tissue_training import _tiny_tissue_model


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_flag, without, missing = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\nbugs\t: avx512_bf16\n")
    assert prec.cpu_has_native_bf16(str(with_flag))
    assert not prec.cpu_has_native_bf16(str(without))  # only the flags line counts
    assert not prec.cpu_has_native_bf16(str(missing))  # unreadable (not Linux): float32 stays


@pytest.mark.parametrize("native", [True, False])
def test_auto_takes_bf16_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    assert prec.resolve_precision("auto") == ("bfloat16" if native else "float32")
    assert prec.resolve_precision("float32") == "float32" and prec.resolve_precision("bfloat16") == "bfloat16"
    with prec.autocast("auto"):
        assert torch.is_autocast_enabled("cpu") is native
    with prec.autocast("float32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, auto, got 'half'"):
        prec.resolve_precision("half")


def test_tissue_model_in_bf16_stays_close_to_float32_and_is_a_saved_setting(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = _tiny_tissue_model()
    model.tta = 2
    x = torch.rand(2, 3, 64, 64)
    ref = model.logits(x)
    calls = []
    real = model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda f: calls.append(torch.is_autocast_enabled("cpu")) or real(f))
    fast = model.with_settings(precision="bfloat16")
    lg = fast.logits(x)
    assert calls == [True, True]  # every view under bfloat16 autocast
    assert lg.dtype == torch.float32 and lg.shape == ref.shape
    assert not torch.equal(lg, ref)  # another arithmetic ...
    scale = ref.abs().max().item()
    assert (lg - ref).abs().max().item() <= 0.05 * scale  # ... within bfloat16's rounding
    assert model.precision == "float32"  # with_settings left the model alone
    fast.precision = "auto"
    again = TissueModel.from_pretrained(fast.save_pretrained(tmp_path / "m"))
    assert again.precision == "auto"
    with pytest.raises(ValueError, match="precision must be one of"):
        model.precision = "fp16"
    with pytest.raises(PathsegError, match="tissue model config: precision must be one of"):
        TissueModel({**model.config, "precision": "fp16"}, backbone=model.backbone)


@pytest.mark.parametrize("native", [True, False])
def test_training_takes_bf16_by_default_only_where_it_is_native(monkeypatch, native):
    from pathseg.train.nuclei import TrainConfig, training_amp

    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert TrainConfig(data=[], out="x").precision == "auto"
    assert training_amp("auto", cpu) is native  # emulated bfloat16 trains several times slower than float32
    assert training_amp("bf16", cpu) and not training_amp("fp32", cpu)
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32, got 'half'"):
        training_amp("half", cpu)
