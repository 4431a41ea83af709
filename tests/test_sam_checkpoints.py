"""SAM checkpoints: every published layout loads strictly; bad files fail with a clear message."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pathseg.errors import PathsegError
from pathseg.models.nucleus_sam import SamNucleusModel, default_config, from_checkpoint
from pathseg.models.sam import build_sam
from pathseg.models.sam.build import ViTConfig
from pathseg.models.sam.checkpoint import infer_size, load_checkpoint

TINY = ViTConfig(
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    img_size=128,
    patch_size=16,
    window_size=4,
    out_chans=32,
)


def tiny_model(seed: int = 0) -> SamNucleusModel:
    torch.manual_seed(seed)
    cfg = default_config(TINY, name="tiny")
    cfg["ais_decoder"]["initial_features"] = 8
    cfg["tile"], cfg["halo"] = 96, 16
    model = SamNucleusModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def assert_same(a: SamNucleusModel, b: SamNucleusModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_official_sizes_are_recognised():
    for size in ("vit_b",):
        assert infer_size(build_sam(size).state_dict()) == size


@pytest.mark.parametrize("layout", ["plain+decoder file", "model_state/decoder_state", "sam. prefix", "safetensors"])
def test_layouts_load_strictly(tmp_path, layout):
    ref = tiny_model()
    sam = ref.sam.state_dict()
    dec = ref.ais.state_dict()
    decoder_path = None
    if layout == "plain+decoder file":
        path = tmp_path / "sam.pth"
        torch.save(sam, path)
        decoder_path = tmp_path / "decoder.pt"
        torch.save(dec, decoder_path)
    elif layout == "model_state/decoder_state":
        path = tmp_path / "export.pt"
        torch.save({"model_state": sam, "decoder_state": dec}, path)
    elif layout == "sam. prefix":
        path = tmp_path / "train.pt"
        torch.save({"model_state": {f"sam.{k}": v for k, v in sam.items()}, "decoder_state": dec, "epoch": 3}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({**sam, **{f"decoder.{k}": v for k, v in dec.items()}}, str(path))
    model = from_checkpoint(path, decoder_path=decoder_path, name="tiny")
    model.config["tile"], model.config["halo"] = 96, 16
    assert_same(model.sam, ref.sam)
    assert_same(model.ais, ref.ais)


def test_pathseg_format_roundtrip(tmp_path):
    ref = tiny_model()
    ref.save_pretrained(tmp_path / "m")
    loaded = SamNucleusModel.from_pretrained(tmp_path / "m")
    assert_same(loaded.sam, ref.sam)
    rgb = (np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)
    assert np.allclose(loaded.predict_maps(rgb), ref.predict_maps(rgb), atol=1e-6)


def test_truncated_file(tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(tiny_model().sam.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PathsegError, match="cannot read checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"junk\n")  # not a checkpoint at all: the weights-only unpickler raises a bare KeyError
    with pytest.raises(PathsegError, match="cannot read checkpoint .*KeyError"):
        load_checkpoint(path)


def test_mismatched_file_names_first_key_and_size(tmp_path):
    sam = tiny_model().sam.state_dict()
    sam.pop("mask_decoder.iou_token.weight")
    sam["mask_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sam, path)
    with pytest.raises(PathsegError) as info:
        from_checkpoint(path)
    msg = str(info.value)
    assert "mask_decoder.iou_token.weight" in msg and "mask_decoder.extra.weight" in msg
    assert "custom ViT (embed 32" in msg


def test_wrong_size_requested(tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(tiny_model().sam.state_dict(), path)
    with pytest.raises(PathsegError, match="expected vit_b"):
        from_checkpoint(path, size="vit_b")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(PathsegError, match="cannot read checkpoint"):
        load_checkpoint(path)
