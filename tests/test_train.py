"""Training: a short resumable run on synthetic data, and two gloo processes under torchrun staying in sync."""

import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pathseg.errors import PathsegError
from pathseg.models.nucleus_sam import SamNucleusModel
from pathseg.train.data import load_samples
from pathseg.train.nuclei import TrainConfig, split_validation, train_nuclei
from tests.conftest import REPO, load_tool, synthetic_nuclei


def nuclei_folder(d, prefix: str = "", seed: int = 0):
    """A training folder ``d`` of 4 synthetic 160² images with instance masks only (files ``{prefix}{i}.png``)."""
    (d / "images").mkdir(parents=True)
    (d / "instance_masks").mkdir()
    for i in range(4):
        rgb, lab = synthetic_nuclei((160, 160), n=8, radius=10, seed=seed + i)
        Image.fromarray(rgb).save(d / "images" / f"{prefix}{i}.png")
        Image.fromarray(lab.astype(np.uint16)).save(d / "instance_masks" / f"{prefix}{i}.png")
    return d


@pytest.fixture
def data(tmp_path):
    return nuclei_folder(tmp_path / "data")


def small_config(data, out, **overrides) -> TrainConfig:
    """A training run small enough for a unit test."""
    settings = dict(
        data=[str(data)],
        out=str(out),
        iterations=2,
        batch=2,
        crop=96,
        val_every=2,
        checkpoint_every=1,
        val_fraction=0.25,
    )
    return TrainConfig(**{**settings, **overrides})


def test_resumable_run(data, tmp_path):
    out = tmp_path / "run"
    cfg = small_config(data, out, corrections=1, prompts_per_image=2)
    best = train_nuclei(cfg, log=lambda *a: None)
    assert set(best) >= {"msa", "aji", "pq", "iteration"}
    assert (out / "checkpoint.pt").is_file() and (out / "best" / "model.safetensors").is_file()
    # a run stopped after logging a step past its last checkpoint, mid-way through writing the next line
    with open(out / "history.jsonl", "a") as f:
        f.write('{"iteration": 3, "loss": 1e9}\n{"iterat')
    cfg.iterations = 3
    train_nuclei(cfg, log=lambda *a: None)
    lines = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3]  # resumed at 2, not restarted; the stale step 3 is gone
    assert all(np.isfinite(r["loss"]) and "prompt" in r for r in lines)
    assert SamNucleusModel.from_pretrained(out / "best").name == "pathseg_nuclei_cpu"


def test_two_processes_stay_in_sync(data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "pathseg.cli",
        "train",
        "nuclei",
        "--data",
        str(data),
        "-o",
        str(tmp_path / "ddp"),
        "--iterations",
        "2",
        "--batch",
        "1",
        "--crop",
        "96",
        "--val-every",
        "2",
        "--check-sync",
        "--precision",
        "fp32",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replicas in sync" in proc.stderr + proc.stdout


def _add_types(data) -> None:
    for img in (data / "instance_masks").glob("*.png"):
        lab = np.asarray(Image.open(img))
        (data / "type_masks").mkdir(exist_ok=True)
        Image.fromarray(np.where(lab > 0, 1 + lab % 2, 0).astype(np.uint8)).save(data / "type_masks" / img.name)
    (data / "classes.csv").write_text("id,name\n0,background\n1,tumour\n2,immune\n")


def test_class_training_adds_a_class_decoder(data, tmp_path):
    _add_types(data)
    out = tmp_path / "cls"
    cfg = small_config(data, out, prompt_weight=0.0, task="classes")
    best = train_nuclei(cfg, log=lambda *a: None)
    assert "class_dice" in best
    model = SamNucleusModel.from_pretrained(out / "best")
    assert model.semantic is not None and [c["name"] for c in model.class_names] == ["background", "tumour", "immune"]
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert all("classes" in r and np.isfinite(r["classes"]) for r in history)


def test_class_training_with_mix_data_keeps_both_splits(data, tmp_path):
    _add_types(data)
    mix = nuclei_folder(tmp_path / "mix", "m", seed=10)  # instance masks only: no type_masks/ beside them
    out, logs = tmp_path / "joint", []
    cfg = small_config(data, out, task="classes", mix=[str(mix)], iterations=3, val_every=3)
    best = train_nuclei(cfg, log=logs.append)
    # each dataset is split as it would be alone, and the best model is chosen by class Dice + the mix's mSA
    _, alone = split_validation(load_samples([str(mix)], 0.25, 0.5), 0.25, 0)
    assert f"--mix: 3 training and 1 validation images without classes ({alone[0].name})" in logs
    assert best["joint"] == pytest.approx(best["class_dice"] + best["msa_mix"])
    model = SamNucleusModel.from_pretrained(out / "best")
    assert [c["name"] for c in model.class_names] == ["background", "tumour", "immune"]  # no class for the mix
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["classes"]) and np.isfinite(r["loss"]) for r in history)
    with pytest.raises(PathsegError, match="--mix"):
        bad = dict(task="classes", decoder_only=True, init=str(out / "best"), mix=[str(mix)])
        train_nuclei(small_config(data, tmp_path / "x", **bad), log=lambda *a: None)


def test_mix_data_can_train_at_its_own_pixel_size(data, tmp_path, monkeypatch):
    _add_types(data)
    mix = nuclei_folder(tmp_path / "mix", "m", seed=10)
    import pathseg.train.nuclei as tn

    shapes, evaluated = {}, []
    real_load, real_eval = tn.load_samples, tn.evaluate

    def load(folders, mpp_in, mpp, **kw):
        out = real_load(folders, mpp_in, mpp, **kw)
        shapes.setdefault(folders[0], (mpp, out[0].image.shape[:2]))  # the first load: the training images
        return out

    def evaluate(model, samples, mpp):
        evaluated.append((samples[0].name, mpp, samples[0].image.shape[:2]))
        return real_eval(model, samples, mpp)

    monkeypatch.setattr(tn, "load_samples", load)
    monkeypatch.setattr(tn, "evaluate", evaluate)
    logs = []
    cfg = small_config(data, tmp_path / "r", task="classes", mix=[str(mix)], mix_mpp=0.4, iterations=1, val_every=1)
    best = train_nuclei(cfg, log=logs.append)
    # the class data at --model-mpp (160 px at 0.25 -> 80 at 0.5), the mix at its own 0.4 (-> 100 px)
    assert shapes[str(data)] == (0.5, (80, 80)) and shapes[str(mix)] == (0.4, (100, 100))
    assert "--mix data at 0.4 µm/px, --data at 0.5 µm/px" in logs
    # validation is scored where the benchmarks score it: the images at their own 0.25 µm/px
    assert [(mpp, shape) for name, mpp, shape in evaluated if name.startswith("m")] == [(0.25, (160, 160))]
    assert np.isfinite(best["msa_mix"])
    with pytest.raises(PathsegError, match="--mix-mpp"):
        train_nuclei(small_config(data, tmp_path / "y", task="classes", mix_mpp=0.4), log=lambda *a: None)


def test_decoder_only_class_training_leaves_the_nuclei_model_untouched(data, tmp_path):
    train_nuclei(small_config(data, tmp_path / "base", prompt_weight=0.0, iterations=1), log=lambda *a: None)
    _add_types(data)
    out = tmp_path / "cls"
    init = str(tmp_path / "base" / "best")
    cfg = small_config(data, out, task="classes", decoder_only=True, model_mpp=0.4, init=init)
    logs: list[str] = []
    train_nuclei(cfg, log=logs.append)
    # the run says which path moves to its pixel size and which keep theirs
    assert (
        "pixel sizes (µm/px) of --init's paths: model 0.5 (kept), automatic 0.5 (kept), prompts 0.5 (kept), "
        "classes 0.4 (new)" in logs
    )
    base_model, trained_model = (SamNucleusModel.from_pretrained(f / "best") for f in (tmp_path / "base", out))
    # the class path works at the run's pixel size; automatic and prompt paths keep theirs
    assert trained_model.class_mpp == 0.4 and trained_model.mpp == base_model.mpp == base_model.class_mpp == 0.5
    base, trained = base_model.state_dict(), trained_model.state_dict()
    assert set(trained) - set(base) and all(k.startswith("semantic.") for k in set(trained) - set(base))
    for k, v in base.items():  # weights and BatchNorm statistics alike
        assert np.array_equal(v.numpy(), trained[k].numpy()), k


def test_decoder_only_ais_training_moves_only_the_automatic_path(data, tmp_path):
    train_nuclei(small_config(data, tmp_path / "base", prompt_weight=0.0, iterations=1), log=lambda *a: None)
    out = tmp_path / "ais"
    cfg = small_config(data, out, decoder_only=True, model_mpp=0.4, init=str(tmp_path / "base" / "best"))
    train_nuclei(cfg, log=lambda *a: None)
    base = SamNucleusModel.from_pretrained(tmp_path / "base" / "best")
    trained = SamNucleusModel.from_pretrained(out / "best")
    assert trained.ais_mpp == 0.4 and trained.mpp == base.mpp == 0.5  # prompts and classes keep their pixel size
    a, b = base.state_dict(), trained.state_dict()
    assert set(a) == set(b)
    changed = {k for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())}
    assert changed and all(k.startswith("ais.") for k in changed)  # encoder weights and BatchNorm statistics kept
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert all("prompt" not in r for r in history)
    with pytest.raises(PathsegError, match="needs --init"):
        train_nuclei(small_config(data, tmp_path / "x", decoder_only=True), log=lambda *a: None)
    # a model whose refiner reads the AIS maps is told that its prompt answers move with the decoder
    SamNucleusModel({**base.config, "mask_refiner": {"width": 4, "dilations": [1]}}).save_pretrained(tmp_path / "r")
    for init, told in ((tmp_path / "base" / "best", False), (tmp_path / "r", True)):
        logs: list[str] = []
        cfg = small_config(data, tmp_path / f"ais_{told}", decoder_only=True, init=str(init), iterations=1)
        train_nuclei(cfg, log=logs.append)
        assert any("prompt answers read the AIS decoder" in line for line in logs) == told


def test_decoder_only_mask_training_moves_only_the_prompt_path(data, tmp_path):
    import torch

    train_nuclei(small_config(data, tmp_path / "base", iterations=1), log=lambda *a: None)
    bundled = SamNucleusModel.from_pretrained(tmp_path / "base" / "best")
    bundled.save_pretrained(tmp_path / "bundled", dtype=torch.float16)  # as the shipped model is stored
    out = tmp_path / "mask"
    best = train_nuclei(
        small_config(data, out, decoder_only="mask", model_mpp=0.4, init=str(tmp_path / "bundled")),
        log=lambda *a: None,
    )
    assert {"msa_box", "msa_point", "msa_prompts"} <= set(best)  # selected by prompt mSA, not by AIS mSA
    base = SamNucleusModel.from_pretrained(tmp_path / "bundled")
    trained = SamNucleusModel.from_pretrained(out / "best")
    assert trained.prompt_mpp == 0.4 and trained.mpp == base.mpp == 0.5 and trained.ais_mpp == base.ais_mpp
    a, b = base.state_dict(), trained.state_dict()
    changed = {k for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())}
    assert changed and all(k.startswith(("sam.mask_decoder.", "sam.prompt_encoder.")) for k in changed)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert all("prompt" in r and "fg" not in r and "dist" not in r for r in history)  # prompt loss only
    for bad in (dict(decoder_only="mask", task="classes"), dict(decoder_only="semantic"), dict(decoder_only="x")):
        with pytest.raises(PathsegError, match="does not apply to task"):
            train_nuclei(small_config(data, tmp_path / "x", init=str(out / "best"), **bad), log=lambda *a: None)
    # the bundle tool ships the new prompt path into the bundled folder, then folds it into the main file
    tool = load_tool("bundle_nuclei_model")
    tool.replace_mask(out / "best", tmp_path / "bundled")
    tool.fold(tmp_path / "bundled")
    shipped = SamNucleusModel.from_pretrained(tmp_path / "bundled")
    assert shipped.prompt_mpp == 0.4 and sorted(p.name for p in (tmp_path / "bundled").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    for k, v in shipped.state_dict().items():
        expected = b[k] if k in changed else a[k]
        assert torch.equal(v, expected.half().to(v.dtype)), k


def test_class_preset_fixes_names_and_outputs(data, tmp_path):
    _add_types(data)  # ids 1, 2 in the masks; the PanNuke preset has 5 classes
    cfg = small_config(data, tmp_path / "p", prompt_weight=0.0, task="classes", class_preset="pannuke")
    train_nuclei(cfg, log=lambda *a: None)
    model = SamNucleusModel.from_pretrained(tmp_path / "p" / "best")
    assert model.semantic.out_channels == 6
    assert [c["name"] for c in model.class_names][1:3] == ["neoplastic", "inflammatory"]
    with pytest.raises(PathsegError, match="unknown class preset"):
        train_nuclei(small_config(data, tmp_path / "q", task="classes", class_preset="nope"), log=lambda *a: None)


def test_unpaired_images_and_masks_are_named_and_binary_masks_refused(data, caplog):
    from pathseg.errors import InputImageError
    from pathseg.train.data import find_pairs

    (data / "images" / "0.png").rename(data / "images" / "lonely.png")
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        assert len(find_pairs(data)) == 3
    assert "1 image(s) without a mask, skipped: lonely" in caplog.text
    assert "1 mask(s) without an image, skipped: 0" in caplog.text
    mask = data / "instance_masks" / "1.png"
    Image.fromarray(((np.asarray(Image.open(mask)) > 0) * 255).astype(np.uint8)).save(mask)  # a binary mask
    with pytest.raises(InputImageError, match="looks like a binary mask"):
        load_samples([data], 0.5, 0.5)


def test_validation_split_keeps_source_images_together():
    from pathseg.train.data import Sample
    from pathseg.train.nuclei import split_validation

    samples = [
        Sample(f"img{i}_{t:03d}", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), int))
        for i in range(5)
        for t in range(4)
    ]
    groups = {s.name: s.name.split("_")[0] for s in samples}
    train, val = split_validation(samples, 0.2, seed=0, groups=groups)
    val_sources = {groups[s.name] for s in val}
    assert len(val_sources) == 1 and len(val) == 4
    assert not val_sources & {groups[s.name] for s in train}


def test_freeze_bn_keeps_the_running_statistics_while_weights_train(data, tmp_path):
    train_nuclei(small_config(data, tmp_path / "a"), log=lambda *a: None)
    a = SamNucleusModel.from_pretrained(tmp_path / "a" / "best").state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in stats if "mean" in k)  # they move
    frozen = small_config(data, tmp_path / "b", init=str(tmp_path / "a" / "best"), freeze_bn=True)
    train_nuclei(frozen, log=lambda *a: None)
    b = SamNucleusModel.from_pretrained(tmp_path / "b" / "best").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in stats)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def _prompt_inputs():
    """A random compact model's SAM, labels of 3 synthetic nuclei (1, 64, 64) and their image embedding."""
    from pathseg.models.nucleus_sam import compact_config

    sam = SamNucleusModel(compact_config(mpp=0.5, tile=128)).sam
    labels = torch.from_numpy(synthetic_nuclei((64, 64), n=3, radius=8, seed=2)[1].astype(np.int64))[None]
    with torch.no_grad():
        embedding = sam.image_encoder(torch.randn(1, 3, 64, 64))
    return sam, labels, embedding


def test_prompt_loss_trains_every_box_candidate_for_box_fitting_models(monkeypatch):
    from pathseg.train.prompts import prompt_loss

    sam, labels, embedding = _prompt_inputs()
    calls = []
    decode = sam.decode

    def spy(*a, multimask_output, **k):
        calls.append(multimask_output)
        return decode(*a, multimask_output=multimask_output, **k)

    monkeypatch.setattr(sam, "decode", spy)
    losses = {}
    for every in (False, True):
        calls.clear()
        rng = np.random.default_rng(0)
        losses[every] = prompt_loss(sam, embedding, labels, rng, 2, 1, step=1, box_candidates=every).item()
        assert calls == [every, False]  # step 1 is a box: 3 candidates only when they are fitted to it
    calls.clear()
    prompt_loss(sam, embedding, labels, np.random.default_rng(0), 2, 1, step=0, box_candidates=True)
    assert calls == [True, False]  # a first point always has 3
    assert np.isfinite(list(losses.values())).all() and losses[True] != losses[False]


def test_prompt_loss_prompts_exact_boxes_without_jitter(monkeypatch):
    from pathseg.nuclei.boxes import mask_box
    from pathseg.train.prompts import prompt_loss

    sam, labels, embedding = _prompt_inputs()
    exact = []
    for lab in torch.unique(labels)[1:]:
        y0, x0, y1, x1 = mask_box(labels[0].numpy() == int(lab), (0, 0, 64, 64))
        exact.append([x0, y0, x1, y1])
    boxes = []
    decode = sam.decode

    def spy(emb, pts, box, *a, **k):
        boxes.append(box)
        return decode(emb, pts, box, *a, **k)

    monkeypatch.setattr(sam, "decode", spy)
    for jitter in (0.0, 0.1):
        boxes.clear()
        prompt_loss(sam, embedding, labels, np.random.default_rng(0), 3, 0, step=1, box_jitter=jitter)
        got = sorted(boxes[0].tolist())
        assert (got == sorted(np.array(exact, float).tolist())) == (jitter == 0)
    with pytest.raises(PathsegError, match="box jitter must be in"):
        train_nuclei(TrainConfig(data=["nowhere"], out="nowhere", box_jitter=-0.1))


def test_images_whose_own_pixel_size_is_not_mpp_are_named(data, caplog):
    import tifffile

    rgb = np.asarray(Image.open(data / "images" / "0.png"))
    (data / "images" / "0.png").unlink()
    tifffile.imwrite(data / "images" / "0.tif", rgb, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 µm/px
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        assert len(load_samples([data], 0.25, 0.25)) == 4
    said = "1 image(s) carry another pixel size than --mpp 0.25 µm/px (0.tif 0.5); they are taken as 0.25"
    assert said in caplog.text


def test_training_folders_take_hovernet_mat_masks(data):
    from scipy.io import savemat

    for png in sorted((data / "instance_masks").glob("*.png")):  # masks as HoVer-Net's .mat files
        inst = np.asarray(Image.open(png)).astype(np.float64)
        savemat(png.with_suffix(".mat"), {"inst_map": inst, "type_map": (inst > 0) * 2})
        png.unlink()
    (data / "images").rename(data / "Images")  # CoNSeP as HoVer-Net ships it: Images/ and Labels/
    (data / "instance_masks").rename(data / "Labels")
    samples = load_samples([data], 0.5, 0.5, with_types=True)  # types from the same file's type_map
    assert len(samples) == 4 and all(s.labels.max() >= 1 for s in samples)
    assert all(set(np.unique(s.types[s.labels > 0]).tolist()) == {2} for s in samples)
