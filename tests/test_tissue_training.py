"""Tissue head training on frozen diffusion features (tiny backbone, synthetic gland images)."""

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pathseg.errors import PathsegError
from pathseg.models.diffusion.backbone import DiffusionBackbone
from pathseg.tissue.model import TissueModel, patch_grid
from pathseg.train.tissue import TissueTrainConfig, train_tissue
from tests.conftest import load_tool
from tests.test_diffusion_backbone import tiny_config


@pytest.fixture
def glands(tmp_path):
    d = tmp_path / "glas"
    (d / "images").mkdir(parents=True)
    (d / "binary_masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        yy, xx = np.mgrid[:80, :100]
        mask = ((yy - rng.integers(20, 60)) ** 2 + (xx - rng.integers(20, 80)) ** 2 < 300).astype(np.uint8)
        rgb = np.where(mask[..., None], [150, 60, 160], [230, 200, 220]) + rng.integers(0, 20, (80, 100, 3))
        Image.fromarray(rgb.astype(np.uint8)).save(d / "images" / f"g{i}.png")
        Image.fromarray(mask).save(d / "binary_masks" / f"g{i}.png")
    return d


@pytest.fixture
def backbone(tmp_path):
    return DiffusionBackbone(tiny_config()).save_pretrained(tmp_path / "bb")


def test_train_tissue_resumes_and_saves_a_working_model(glands, backbone, tmp_path):
    out = tmp_path / "run"
    cfg = TissueTrainConfig(
        data=[str(glands)],
        out=str(out),
        backbone=str(backbone),
        crop=64,
        batch=2,
        iterations=2,
        val_every=2,
        checkpoint_every=1,
        timesteps=[10],
        blocks=[2, 3],
        hidden=8,
    )
    best = train_tissue(cfg, log=lambda *a: None)
    assert {"accuracy", "mean_dice", "mean_iou", "iteration"} <= set(best)
    cfg.iterations = 3  # resume from the checkpoint at iteration 2
    train_tissue(cfg, log=lambda *a: None)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2, 3]
    model = TissueModel.from_pretrained(out / "best")
    rgb = np.asarray(Image.open(glands / "images" / "g0.png"))
    probs = model.probabilities(rgb)
    assert probs.shape == (2, 80, 100) and np.allclose(probs.sum(0), 1, atol=1e-5)
    big = np.tile(rgb, (2, 2, 1))  # larger than one patch: blended tiles cover every pixel
    assert model.segment(big).shape == big.shape[:2]
    assert [c["name"] for c in model.class_names] == ["background", "gland"]


def _tiny_train_config(glands, out, backbone: str, **kw) -> TissueTrainConfig:
    """Head training on the synthetic glands over the tiny backbone's block 3 (64-px crops, hidden 8)."""
    base = dict(crop=64, batch=2, timesteps=[10], blocks=[3], hidden=8)
    return TissueTrainConfig(data=[str(glands)], out=str(out), backbone=backbone, **{**base, **kw})


def test_random_backbone_and_label_fraction(glands, backbone, tmp_path):
    cfg = _tiny_train_config(
        glands,
        tmp_path / "r",
        f"random:{backbone}",
        iterations=1,
        val_every=1,
        head_dilations=[1, 2, 4],
        label_fraction=0.25,
    )
    logs = []
    train_tissue(cfg, log=logs.append)
    assert "1 training and 1 validation images" in logs[0]
    assert TissueModel.from_pretrained(tmp_path / "r" / "best").head.dilations == (1, 2, 4)


def test_head_keeps_the_feature_grid_and_its_default_layout():
    from pathseg.tissue.head import SegHead

    x = torch.randn(2, 12, 20, 24)
    assert SegHead(12, 3, 8, (1, 2, 4, 8))(x).shape == (2, 3, 20, 24)
    keys = set(SegHead(12, 3, 8).state_dict())  # the layout of heads saved before dilations existed
    assert {"body.0.weight", "body.1.weight", "body.3.weight", "body.4.weight"} <= keys and not any(
        k.startswith("body.6") for k in keys
    )


def test_tissue_cli_writes_outputs_and_evaluates(glands, backbone, tmp_path, capsys):
    from pathseg.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "tissue",
                "--data",
                str(glands),
                "-o",
                str(run),
                "--backbone",
                str(backbone),
                "--crop",
                "64",
                "--batch",
                "2",
                "--iterations",
                "1",
                "--val-every",
                "1",
                "--timesteps",
                "10",
                "--blocks",
                "3",
                "-q",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert main(["tissue", str(glands / "images"), "-o", str(out), "--model", str(run / "best"), "-q"]) == 0
    classes = tifffile.imread(out / "g0_tissue.tif")
    assert classes.dtype == np.uint8 and classes.shape == (80, 100)
    fc = json.loads((out / "g0_tissue.geojson").read_text())
    # every gland region is a QuPath annotation with its classification, and the areas add up to the class map's
    areas = sum(f["properties"]["measurements"]["area_px"] for f in fc["features"])
    assert areas == (classes == 1).sum()
    assert all(f["properties"]["classification"]["name"] == "gland" for f in fc["features"])
    table = (out / "g0_tissue_areas.csv").read_text().splitlines()
    assert table[0].startswith("class_id,class,pixels") and len(table) == 3
    # a model's cleaning (config "clean", µm²) applies to `pathseg tissue` unless --no-clean
    from pathseg.tissue.model import TissueModel
    from pathseg.tissue.postprocess import clean_classes

    cfg_path = run / "best" / "config.json"
    params = {"max_hole_um2": 40.0, "min_area_um2": 40.0}
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "clean": params}))
    mpp = TissueModel.from_pretrained(run / "best").mpp  # the PNGs carry no pixel size
    for flags, expected in (([], clean_classes(classes, mpp, params)), (["--no-clean"], classes)):
        again = tmp_path / f"out{len(flags)}"
        args = ["tissue", str(glands / "images" / "g0.png"), "-o", str(again), "--model", str(run / "best"), "-q"]
        assert main(args + flags) == 0
        assert np.array_equal(tifffile.imread(again / "g0_tissue.tif"), expected)
    # --tta overrides the model's test-time views
    model = TissueModel.from_pretrained(run / "best")
    model.tta = 8
    rgb = np.array(Image.open(glands / "images" / "g0.png"))
    args = ["tissue", str(glands / "images" / "g0.png"), "-o", str(tmp_path / "tta"), "--model", str(run / "best")]
    assert main([*args, "--tta", "8", "--no-clean", "-q"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "tta" / "g0_tissue.tif"), model.segment(rgb, clean=False))
    model.tta_space = "latent"  # --tta-space: the views of the latent
    assert main([*args, "--tta", "8", "--tta-space", "latent", "--no-clean", "-q"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "tta" / "g0_tissue.tif"), model.segment(rgb, clean=False))
    model.tta_space = "image"
    # --stride overrides the model's patch stride; a stride the model cannot take is refused with a message
    model.tta, model.step = 1, model.patch // 4
    assert main([*args, "--stride", str(model.patch // 4), "--no-clean", "-q"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "tta" / "g0_tissue.tif"), model.segment(rgb, clean=False))
    assert main([*args, "--stride", str(model.patch + 1), "-q"]) != 0
    assert "stride must be" in capsys.readouterr().err
    capsys.readouterr()
    # `pathseg nuclei --classes` into the same folder: its <stem>_classes.tif is no tissue map and is left alone
    tifffile.imwrite(out / "g0_classes.tif", np.full((80, 100), 7, np.uint8))
    assert (
        main(["evaluate", "tissue", "--pred", str(out), "--gt", str(glands), "--json", str(tmp_path / "s.json")]) == 0
    )
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["images"] == 5 and 0 <= scores["mean_iou"] <= 1 and "object_f1" in scores


def test_tissue_cli_without_a_model_says_what_to_do(tmp_path, capsys, monkeypatch):
    from pathseg.cli import main
    from pathseg.models import zoo

    monkeypatch.setattr(zoo, "TISSUE_PREFERENCE", ())  # as if no tissue model were installed
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["tissue", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")]) != 0
    assert "pathseg train tissue" in capsys.readouterr().err


def test_feature_bank_holds_the_features_of_each_turned_patch(glands, backbone):
    from pathseg.tissue.cache import FeatureBank, _view
    from pathseg.tissue.classes import GLAS, IGNORE
    from pathseg.tissue.data import load_tissue_samples
    from pathseg.tissue.features import DiffusionFeatures

    samples = load_tissue_samples([glands], GLAS)[:2]
    feats = DiffusionFeatures(DiffusionBackbone.from_pretrained(backbone), [10], [2, 3])
    bank = FeatureBank(feats, samples, 64, views=2)
    # 80 x 100 at patch 64, step 48: 2 x 2 patches per view, 2 views per image
    assert len(bank) == 2 * (4 + 4) and bank.feats.dtype == torch.float16
    turned = _view(samples[0].image, 1)  # (100, 80, 3): the second view's first patch is its top-left 64 x 64
    direct = feats(torch.from_numpy(turned[:64, :64].copy()).permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(bank.feats[4].float(), direct[0], atol=1e-2 * float(direct.abs().max()))
    assert torch.equal(bank.targets[4], torch.from_numpy(_view(samples[0].target, 1)[:64, :64].copy()))
    # the last column of patches reaches past the image: its padding is ignored, never scored as background
    assert (bank.targets[1][:, 100 - 48 :] == IGNORE).all() and (bank.targets[1][:, : 100 - 48] != IGNORE).all()
    with pytest.raises(PathsegError, match="feature cache would take"):
        FeatureBank(feats, samples, 64, views=2, max_gb=1e-6)


def test_tissue_model_shares_the_nucleus_models_encoder_by_digest(tmp_path):
    """A bundled tissue model conditioned on the bundled nucleus model's encoder stores it once, pinned by digest."""
    from safetensors import safe_open

    from pathseg.models.diffusion.backbone import compact_encoder_weights

    enc_cfg, enc_state = compact_encoder_weights("pathseg_nuclei_cpu")
    cfg = tiny_config()
    cfg["encoder"] = {
        "type": "compact_pooled",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "input_size": None,
        "kwargs": {k: enc_cfg[k] for k in ("widths", "blocks", "out_chans")},
    }
    cfg["conditioner"]["patch_dim"] = enc_cfg["out_chans"]
    bb = DiffusionBackbone(cfg)
    bb.encoder.body.load_state_dict(enc_state)
    model = TissueModel(_tiny_tissue_config(), backbone=bb).eval()
    folder = model.save_pretrained(tmp_path / "m", share_encoder="pathseg_nuclei_cpu")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("backbone.encoder.") for k in f.keys())
    again = TissueModel.from_pretrained(folder)
    rgb = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    assert np.allclose(again.probabilities(rgb), model.probabilities(rgb), atol=1e-5)
    # tools/bundle_tissue_model.py --own-encoder: the referenced encoder stored beside the main file, outputs equal
    own = tmp_path / "own"
    shutil.copytree(folder, own)
    tool = load_tool("bundle_tissue_model")
    assert tool.own_encoder(own) == 0
    assert (own / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert "weights_from" not in json.loads((own / "config.json").read_text())["backbone"]["encoder"]
    assert np.array_equal(TissueModel.from_pretrained(own).probabilities(rgb), again.probabilities(rgb))
    with pytest.raises(SystemExit, match="already"):
        tool.own_encoder(own)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["encoder"]["weights_from"]["sha256"] = "0" * 64  # the nucleus model changed since
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PathsegError, match="has changed since"):
        TissueModel.from_pretrained(folder)
    with torch.no_grad():
        next(bb.encoder.parameters()).add_(1.0)
    with pytest.raises(PathsegError, match="cannot be shared"):
        model.save_pretrained(tmp_path / "m2", share_encoder="pathseg_nuclei_cpu")


def _tiny_tissue_config(**head) -> dict:
    """A two-class tissue model config over the tiny backbone's features (64-px patches)."""
    return {
        "name": "t",
        "mpp": 1.0,
        "classes": [{"name": "a", "color": [0, 0, 0]}, {"name": "b", "color": [255, 0, 0]}],
        "features": {"timesteps": [10], "blocks": [2, 3]},
        "head": {"hidden": 8, **head},
        "patch_size": 64,
    }


def _tiny_tissue_model() -> TissueModel:
    torch.manual_seed(0)
    return TissueModel(_tiny_tissue_config(dilations=[1, 2]), backbone=DiffusionBackbone(tiny_config())).eval()


def test_tissue_tta_averages_dihedral_views_and_is_saved(tmp_path):
    """With all 8 views a turned or mirrored patch gets the turned / mirrored logits; tta is a saved setting."""
    model = _tiny_tissue_model()
    x = torch.rand(2, 3, 64, 64)
    plain = model.logits(x)
    model.tta = 8
    lg = model.logits(x)
    assert not torch.allclose(lg, plain, atol=1e-4)  # the views do differ
    turned = model.logits(torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.allclose(turned, torch.rot90(lg, 1, dims=(-2, -1)), atol=1e-4)
    mirrored = model.logits(torch.flip(x, dims=(-1,)))
    assert torch.allclose(mirrored, torch.flip(lg, dims=(-1,)), atol=1e-4)
    model.tta = 2
    manual = (plain + torch.flip(_plain_logits(model, torch.flip(x, dims=(-1,))), dims=(-1,))) / 2
    assert torch.allclose(model.logits(x), manual, atol=1e-5)
    again = TissueModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.tta == 2
    with pytest.raises(ValueError, match="tta must be"):
        model.tta = 3
    with pytest.raises(PathsegError, match="tta must be"):
        TissueModel({**model.config, "tta": 3})


def test_tissue_views_of_the_latent_encode_each_patch_once(tmp_path, monkeypatch):
    """tta_space "latent": one encoder pass per patch, its latent turned per view; a saved setting."""
    from pathseg.tissue.model import unview_dihedral, view_dihedral

    model = _tiny_tissue_model()
    x = torch.rand(2, 3, 64, 64)
    image_views = _plain_logits(model, x)
    model.tta_space = "latent"
    assert torch.allclose(_plain_logits(model, x), image_views, atol=1e-5)  # one view: the same either way
    model.tta = 4
    encoded = []
    latent = model.features.latent
    monkeypatch.setattr(model.features, "latent", lambda v, *a: encoded.append(v.shape) or latent(v, *a))
    lg = model.logits(x)
    assert encoded == [x.shape]  # once, not per view
    z0, ctx = latent(x)
    views = [unview_dihedral(model.head(model.features.from_latent(view_dihedral(z0, k), ctx)), k) for k in range(4)]
    mean = torch.nn.functional.interpolate(sum(views) / 4, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(lg, mean, atol=1e-5)
    model.tta_space = "image"
    assert not torch.allclose(model.logits(x), lg, atol=1e-4)  # turning the image is another thing
    model.tta_space = "latent"
    assert TissueModel.from_pretrained(model.save_pretrained(tmp_path / "m")).tta_space == "latent"
    with pytest.raises(ValueError, match="tta_space must be"):
        model.tta_space = "pixels"
    with pytest.raises(PathsegError, match="tta_space must be"):
        TissueModel({**model.config, "tta_space": "pixels"})


def test_tissue_probabilities_report_progress_over_the_patches():
    model = _tiny_tissue_model()
    rgb = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    calls = []
    probs = model.probabilities(rgb, batch=2, progress=lambda done, total, what: calls.append((done, total, what)))
    n = model.patch  # the tiny model's patch is 64 px: a 2 x 3 grid at its stride
    ys, xs = patch_grid(100, n, model.step), patch_grid(150, n, model.step)
    assert calls[-1] == (len(ys) * len(xs), len(ys) * len(xs), "patches") and len(calls) == -(-calls[-1][0] // 2)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert np.allclose(probs, model.probabilities(rgb))


def test_tissue_backbone_memory_layout_changes_speed_not_numbers(tmp_path):
    model = _tiny_tissue_model()
    x = torch.rand(2, 3, 64, 64)
    fast = model.logits(x)  # channels-last by default
    assert model.backbone.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    model.channels_last = False
    plain = model.logits(x)
    assert model.backbone.unet.conv_in.weight.is_contiguous()
    assert torch.allclose(fast, plain, atol=1e-5)
    model.channels_last = True
    assert torch.allclose(model.logits(x), fast, atol=1e-6)
    again = TissueModel.from_pretrained(model.save_pretrained(tmp_path / "m"))  # saved from channels-last weights
    assert torch.allclose(again.logits(x), fast, atol=1e-5)


def test_tissue_stride_is_a_saved_setting_that_changes_the_patch_grid(tmp_path):
    """Config ``stride`` (px) sets the patch grid: a finer one blends more patches; bad values are refused."""
    model = _tiny_tissue_model()
    rgb = (np.random.default_rng(2).random((100, 130, 3)) * 255).astype(np.uint8)
    assert model.step == 48  # default: a quarter overlap of the 64-px patch
    coarse = model.probabilities(rgb)
    model.step = 32
    fine = model.probabilities(rgb)
    assert fine.shape == coarse.shape and not np.allclose(fine, coarse, atol=1e-4)
    again = TissueModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.step == 32 and np.allclose(again.probabilities(rgb), fine, atol=1e-5)
    for bad in (0, 65, 1.5, True):
        with pytest.raises(PathsegError, match="stride must be"):
            model.step = bad
        with pytest.raises(PathsegError, match="stride must be"):
            TissueModel({**model.config, "stride": bad}, backbone=model.backbone)


def test_tissue_settings_for_one_run_leave_the_model_alone():
    model = _tiny_tissue_model()
    assert model.with_settings() is model and model.with_settings(tta=model.tta, stride=model.step) is model
    other = model.with_settings(tta=2, tta_space="latent", stride=model.patch // 2)
    assert (other.tta, other.tta_space, other.step) == (2, "latent", model.patch // 2)
    assert (model.tta, model.tta_space, "stride" in model.config) == (1, "image", False)
    assert other.backbone is model.backbone and other.head is model.head  # the weights are shared
    with pytest.raises(PathsegError, match="stride must be"):
        model.with_settings(stride=model.patch + 1)


def _plain_logits(model: TissueModel, x: torch.Tensor) -> torch.Tensor:
    saved, model.tta = model.tta, 1
    try:
        return model.logits(x)
    finally:
        model.tta = saved


def test_tissue_model_saved_without_the_autoencoder_decoder(tmp_path):
    """Features only encode: a model folder can leave the VQ decoder out and give the same probabilities."""
    from safetensors import safe_open

    model = _tiny_tissue_model()
    rgb = (np.random.default_rng(1).random((70, 90, 3)) * 255).astype(np.uint8)
    before = model.probabilities(rgb)
    full = model.save_pretrained(tmp_path / "full")
    model.backbone.drop_decoder()
    slim = model.save_pretrained(tmp_path / "slim")
    with safe_open(str(slim / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith(("backbone.vq.decoder.", "backbone.vq.post_quant_conv.")) for k in keys)
    assert (slim / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size
    again = TissueModel.from_pretrained(slim)
    assert again.backbone.vq.decoder is None and again.config["backbone"]["vq_decoder"] is False
    assert np.allclose(again.probabilities(rgb), before, atol=1e-5)
    assert TissueModel.from_pretrained(full).backbone.vq.decoder is not None


def test_feature_bank_stain_jitters_every_view_but_the_first(glands, backbone, tmp_path):
    """``stain``: the first view of each image as it is, the others recoloured (one draw each, from the seed), the
    targets untouched; training takes it and refuses a strength outside [0, 1)."""
    from pathseg.tissue.cache import FeatureBank, _view
    from pathseg.tissue.classes import GLAS
    from pathseg.tissue.data import load_tissue_samples
    from pathseg.tissue.features import DiffusionFeatures

    samples = load_tissue_samples([glands], GLAS)[:1]
    feats = DiffusionFeatures(DiffusionBackbone.from_pretrained(backbone), [10], [3])
    plain = FeatureBank(feats, samples, 64, 2, images=True)
    banks = [FeatureBank(feats, samples, 64, 2, images=True, stain=0.2, seed=s) for s in (0, 0, 1)]
    assert torch.equal(banks[0].images[:4], plain.images[:4]) and torch.equal(banks[0].feats[:4], plain.feats[:4])
    assert torch.equal(banks[0].targets, plain.targets) and torch.equal(banks[0].images, banks[1].images)
    turned = torch.from_numpy(_view(samples[0].image, 1)[:64, :64].copy()).float()
    for bank in (banks[0], banks[2]):  # recoloured, not replaced: a tinted copy of the turned patch
        jittered = bank.images[4].float()
        assert (jittered - turned).abs().mean() > 1 and np.corrcoef(jittered.ravel(), turned.ravel())[0, 1] > 0.8
    assert not torch.equal(banks[0].images[4:], banks[2].images[4:])
    with pytest.raises(ValueError, match="stain must lie"):
        FeatureBank(feats, samples, 64, 2, stain=1.5)
    cfg = _tiny_train_config(glands, tmp_path / "run", str(backbone), iterations=2, val_every=2, stain=0.05)
    train_tissue(cfg, log=lambda *a: None)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["stain"] == 0.05
    cfg.stain, cfg.out = -0.1, str(tmp_path / "bad")
    with pytest.raises(PathsegError, match="jitter strength"):
        train_tissue(cfg, log=lambda *a: None)


def test_pixel_refiner_starts_as_the_identity_and_trains_on_the_cached_images(glands, backbone, tmp_path):
    """A head with a pixel refiner: unchanged logits before training; trained from the bank's image patches, saved,
    reloaded, and its refined logits depend on the image's pixels."""
    import torch.nn.functional as F

    from pathseg.tissue.cache import FeatureBank, _view
    from pathseg.tissue.classes import GLAS
    from pathseg.tissue.data import load_tissue_samples
    from pathseg.tissue.features import DiffusionFeatures
    from pathseg.tissue.head import SegHead
    from pathseg.train.tissue import head_loss

    head = SegHead(12, 2, 8, (1,), refine=4)
    f, img = torch.randn(2, 12, 16, 16), torch.rand(2, 3, 64, 64)
    coarse = F.interpolate(head(f), size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(head.to_pixels(head(f), (64, 64), img), coarse)
    with pytest.raises(ValueError, match="needs the images"):
        head_loss(head, f, torch.zeros(2, 64, 64, dtype=torch.long), torch.ones(2))

    samples = load_tissue_samples([glands], GLAS)[:1]
    bank = FeatureBank(
        DiffusionFeatures(DiffusionBackbone.from_pretrained(backbone), [10], [3]), samples, 64, 2, images=True
    )
    assert torch.equal(bank.images[4], torch.from_numpy(_view(samples[0].image, 1)[:64, :64].copy()))
    feats, y, x = bank.batch(3, np.random.default_rng(0))
    assert x.shape == (3, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1

    cfg = _tiny_train_config(glands, tmp_path / "run", str(backbone), iterations=3, val_every=3, refine=4)
    train_tissue(cfg, log=lambda *a: None)
    model = TissueModel.from_pretrained(tmp_path / "run" / "best")
    assert model.config["head"]["refine"] == 4 and float(model.head.refiner.out.weight.detach().abs().sum()) > 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        coarse = F.interpolate(model.head(model.features(x)), size=(64, 64), mode="bilinear", align_corners=False)
    assert not torch.allclose(model.logits(x), coarse, atol=1e-6)
    rgb = np.asarray(Image.open(glands / "images" / "g0.png"))
    assert model.segment(rgb).shape == rgb.shape[:2]
    cfg.refine, cfg.out = -1, str(tmp_path / "bad")
    with pytest.raises(PathsegError, match="pixel refiner's width"):
        train_tissue(cfg, log=lambda *a: None)


def test_a_tissue_models_backbone_serves_as_a_backbone_by_its_folder(tmp_path):
    from pathseg.models.zoo import get_backbone

    model = _tiny_tissue_model()
    model.save_pretrained(tmp_path / "tissue")
    bb = get_backbone(tmp_path / "tissue")  # e.g. `pathseg train tissue --backbone pathseg_tissue` for new classes
    assert isinstance(bb, DiffusionBackbone)
    theirs = model.backbone.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in bb.state_dict().items())


def test_black_fill_reaches_the_tissue_head_as_glass(monkeypatch):
    from pathseg.io.convert import black_fill_as_glass

    model = _tiny_tissue_model()
    rgb = np.random.default_rng(0).integers(40, 220, (80, 96, 3), dtype=np.uint8)
    rgb[:, :30] = np.random.default_rng(1).integers(0, 5, (80, 30, 3))  # blacked out, with JPEG-like noise
    seen = []
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda x: seen.append(x) or logits(x))
    model.probabilities(rgb)
    assert all(float(x.min()) >= 40 / 255 for x in seen)  # the fill arrived as white, nothing else changed
    tissue = rgb[:, 30:].copy()
    assert black_fill_as_glass(tissue) is tissue  # no fill: the same array, nothing copied
    glass = black_fill_as_glass(rgb)
    assert (glass[:, :30] == 255).all() and np.array_equal(glass[:, 30:], rgb[:, 30:]) and rgb[:, :30].max() < 5
