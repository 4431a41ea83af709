"""The prompt-mask refiner: identity at start, regions, add-on weights, the predictor path and a resumable run."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pathseg.errors import PathsegError
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.models.refine import MaskRefiner, paste_roi, prompt_roi, refine_roi
from pathseg.nuclei.interactive import Predictor
from pathseg.train.refine import RefinerConfig, train_refiner
from tests.conftest import synthetic_nuclei
from tests.test_train import data  # noqa: F401  (fixture)


def refined_model(tile: int = 128) -> SamNucleusModel:
    cfg = compact_config(mpp=0.5, tile=tile)
    cfg["halo"] = 16
    cfg["mask_refiner"] = {"width": 8, "dilations": [1, 2]}
    return SamNucleusModel(cfg).eval()


def small_run(folder, out, init, **overrides) -> RefinerConfig:
    """A refiner run small enough for a unit test (96-px crops, 2 objects per crop, one correction)."""
    settings = dict(mpp_in=0.5, crop=96, batch=2, iterations=2, val_fraction=0.25, prompts_per_image=2, corrections=1)
    return RefinerConfig(data=[str(folder)], out=str(out), init=str(init), **{**settings, **overrides})


def test_a_new_refiner_returns_the_coarse_logits():
    ref = MaskRefiner(width=8)
    coarse = torch.randn(3, 1, 20, 24) * 5
    logits, iou = ref(coarse, torch.randn(3, 6, 20, 24))
    assert torch.equal(logits, coarse) and iou.shape == (3,) and ((iou > 0) & (iou < 1)).all()


def test_roi_holds_mask_and_prompts_and_is_capped():
    coarse = np.zeros((1, 100, 100), bool)
    coarse[0, 40:50, 30:45] = True
    assert prompt_roi(coarse, (100, 100), points=np.array([[60.0, 70.0]]), margin=5) == (35, 25, 75, 65)
    assert prompt_roi(coarse, (100, 100), box=np.array([0.0, 0.0, 10.0, 10.0]), margin=16, max_size=100) == (
        0,
        0,
        66,
        61,
    )
    big = np.ones((1, 400, 400), bool)  # a runaway candidate: the region stays around the prompt
    y0, x0, y1, x1 = prompt_roi(big, (400, 400), points=np.array([[200.0, 200.0]]), max_size=64)
    assert y1 - y0 <= 65 and x1 - x0 <= 65 and y0 <= 200 < y1 and x0 <= 200 < x1
    # outside the region nothing stays foreground
    coarse, roi = torch.full((2, 50, 50), 3.0), (10, 10, 20, 20)
    logits, _ = refine_roi(MaskRefiner(width=4), coarse, torch.zeros(6, 50, 50), roi)
    out = paste_roi(coarse, roi, logits)
    assert (out[:, 10:20, 10:20] > 0).all() and (out > 0).sum() == 2 * 100


def test_predictor_uses_the_refiner_and_caches_its_guide(tmp_path):
    model = refined_model()
    with torch.no_grad():  # a refiner that blanks everything: its effect must show in the masks
        model.refiner.out.bias.fill_(-100.0)
    rgb, _ = synthetic_nuclei((200, 230), n=10, radius=10, seed=5)
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5, cache=tmp_path / "emb.safetensors")
    assert all(g is not None and g.shape[0] == 6 for g in p.guides)
    r = p.predict(points=np.array([[50, 60]]), labels=np.array([1]))
    assert r.masks.shape == (3, 200, 230) and not r.masks.any()
    p2 = Predictor(model)
    p2.set_image(rgb, mpp=0.5, cache=tmp_path / "emb.safetensors")  # from the cache, guides included
    assert all(torch.equal(a, b) for a, b in zip(p.guides, p2.guides, strict=True))
    r2 = p2.predict(points=np.array([[50, 60]]), labels=np.array([1]))
    assert np.array_equal(r.iou, r2.iou)


def test_corrective_prompts_use_the_correction_refiner(tmp_path):
    cfg = refined_model().config
    cfg["mask_refiner"].update(feature_in=32, feature_channels=2)  # the main guide holds 8 channels
    model = SamNucleusModel({**cfg, "correction_refiner": {"width": 4, "dilations": [1]}}).eval()
    with torch.no_grad():  # a correction refiner that blanks everything: its effect must show in the masks
        model.correction_refiner.out.bias.fill_(-100.0)
    rgb, _ = synthetic_nuclei((200, 230), n=10, radius=10, seed=5)
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5)
    assert all(g.shape[0] == 8 for g in p.guides)
    first = p.predict(points=np.array([[50, 60]]), labels=np.array([1]))  # no feedback: the main refiner
    assert first.masks.any()
    again = p.predict(points=np.array([[50, 60]]), labels=np.array([1]), mask_input=first.mask_prompt(0))
    assert not again.masks.any()
    loaded = SamNucleusModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert torch.equal(loaded.correction_refiner.out.bias, model.correction_refiner.out.bias)
    with pytest.raises(PathsegError, match="correction_refiner needs a mask_refiner"):
        SamNucleusModel({**cfg, "mask_refiner": None, "correction_refiner": {"width": 4}})
    with pytest.raises(PathsegError, match="correction_refiner needs"):  # it reads the guide's first 6 channels only
        SamNucleusModel({**cfg, "correction_refiner": {"width": 4, "feature_in": 32, "feature_channels": 2}})


def test_bundle_tool_keeps_the_replaced_refiner_for_corrections(tmp_path):
    from tests.conftest import load_tool

    bundled = refined_model()
    folder = save_with_add_on_refiner(bundled, tmp_path / "bundled")
    cfg = {**bundled.config, "mask_refiner": {"width": 4, "dilations": [1], "feature_in": 32, "feature_channels": 2}}
    run = SamNucleusModel(cfg).eval()
    run.load_state_dict({k: v for k, v in bundled.state_dict().items() if not k.startswith("refiner.")}, strict=False)
    run.save_pretrained(tmp_path / "run")
    tool = load_tool("bundle_nuclei_model")
    tool.add_refiner(tmp_path / "run", folder, keep_for_corrections=True)
    shipped = SamNucleusModel.from_pretrained(folder)
    assert shipped.refiner.feature_channels == 2 and shipped.correction_refiner.width == 8
    for k, v in bundled.refiner.state_dict().items():
        assert torch.equal(shipped.correction_refiner.state_dict()[k], v), k
    for k, v in run.refiner.state_dict().items():
        assert torch.equal(shipped.refiner.state_dict()[k], v), k
    with pytest.raises(SystemExit, match="no correction refiner yet"):
        tool.add_refiner(tmp_path / "run", folder, keep_for_corrections=True)
    with pytest.raises(SystemExit, match="trained on other weights"):  # it lacks the shipped correction refiner
        tool.add_refiner(tmp_path / "run", folder)
    with torch.no_grad():  # a later refiner, trained on the shipped model: the correction refiner stays
        shipped.refiner.out.bias.fill_(0.5)
    tool.add_refiner(shipped.save_pretrained(tmp_path / "run2"), folder)
    again = SamNucleusModel.from_pretrained(folder)
    assert again.refiner.out.bias.item() == 0.5
    assert torch.equal(again.correction_refiner.out.bias, bundled.refiner.out.bias)


def test_prompt_iou_picks_the_estimate_that_ranks_candidates():
    model = refined_model()
    rgb, _ = synthetic_nuclei((200, 230), n=10, radius=10, seed=5)
    seen = {}
    decode = model.sam.decode

    def spy(*a, **k):  # the decoder's own IoU estimate
        low, iou = decode(*a, **k)
        seen["iou"] = iou[0].numpy().copy()
        return low, iou

    model.sam.decode = spy
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5)
    ranked = {}
    for source in ("refiner", "decoder"):
        model.config["prompt_iou"] = source
        ranked[source] = p.predict(points=np.array([[50, 60]]), labels=np.array([1]))
    assert np.array_equal(ranked["decoder"].iou, seen["iou"]) and not np.array_equal(ranked["refiner"].iou, seen["iou"])
    assert np.array_equal(ranked["refiner"].masks, ranked["decoder"].masks)  # refined masks either way
    model.config["prompt_iou"] = "largest"
    with pytest.raises(PathsegError, match="prompt_iou must be"):
        p.predict(points=np.array([[50, 60]]), labels=np.array([1]))


def save_with_add_on_refiner(model: SamNucleusModel, folder):
    """``model`` saved to ``folder`` as the bundled one is: its refiner in the add-on file ``refiner.safetensors``."""
    folder = model.save_pretrained(folder)
    state = SamNucleusModel.from_pretrained(folder).state_dict()
    refiner = {k: v for k, v in state.items() if k.startswith("refiner.")}
    base = {k: v for k, v in state.items() if not k.startswith("refiner.") and "num_batches" not in k}
    save_file(base, str(folder / "model.safetensors"))
    save_file(refiner, str(folder / "refiner.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "extra_weights": ["refiner.safetensors"]}))
    return folder


def test_refiner_ships_as_an_add_on_file(tmp_path):
    model = refined_model()
    state = model.state_dict()
    folder = save_with_add_on_refiner(model, tmp_path / "m")
    again = SamNucleusModel.from_pretrained(folder)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
    again.save_pretrained(tmp_path / "one")  # saved again: one file, no add-on listed
    assert "extra_weights" not in json.loads((tmp_path / "one" / "config.json").read_text())
    save_file({"refiner.out.bias": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(PathsegError, match="already has"):
        SamNucleusModel.from_pretrained(folder)


def test_refiner_training_touches_only_the_refiner_and_resumes(data, tmp_path):  # noqa: F811
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    base = SamNucleusModel(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    out = tmp_path / "ref"
    run = small_run(data, out, tmp_path / "base", val_every=2, checkpoint_every=1, width=8, dilations=(1, 3))
    best = train_refiner(run, log=lambda *a: None)
    assert {"msa_box", "msa_point", "msa_prompts"} <= set(best)
    run.iterations = 3
    train_refiner(run, log=lambda *a: None)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in history] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in history)
    trained = SamNucleusModel.from_pretrained(out / "best")
    assert trained.refiner is not None and trained.config["mask_refiner"]["dilations"] == [1, 3]
    assert trained.refiner.body[2].dilation == (3, 3) and trained.refiner.width == 8
    for k, v in base.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k
    assert trained.refiner.out.weight.abs().sum() > 0  # zero at the start: the refiner learned


def test_refiner_training_through_the_cli(data, tmp_path, capsys):  # noqa: F811
    from pathseg.cli import main

    small = ["--mpp", "0.5", "--iterations", "2", "--batch", "2", "--prompts-per-image", "2", "--corrections", "1"]
    args = ["--val-fraction", "0.25", "--val-every", "2", "--width", "8", "--dilations", "1", "3", "-q", *small]
    for tile in (128, 256):  # the 256-px training crops need a prompt window at least as large
        cfg = compact_config(mpp=0.5, tile=tile)
        cfg["halo"] = 16
        SamNucleusModel(cfg).save_pretrained(tmp_path / f"base{tile}")
        out = tmp_path / f"ref{tile}"
        init = ["--init", str(tmp_path / f"base{tile}")]
        code = main(["train", "nuclei-refiner", "--data", str(data), "-o", str(out), *init, *args])
        captured = capsys.readouterr()
        if tile == 128:
            assert code == 2 and "its prompt window is 128 px, smaller than the 256 px training crops" in captured.err
            continue
        assert code == 0 and "best validation scores" in captured.out and f"{out}/best" in captured.out
        assert SamNucleusModel.from_pretrained(out / "best").config["mask_refiner"]["dilations"] == [1, 3]


def test_prompt_maps_draw_the_box_and_the_points_in_the_region():
    from pathseg.models.refine import prompt_maps

    m = prompt_maps(
        (10, 20, 40, 60), np.array([[30.0, 15.0], [50.0, 35.0]]), np.array([1, 0]), np.array([25, 12, 35, 22])
    )
    assert m.shape == (3, 30, 40)
    assert m[0].sum() == 10 * 10 and m[0, 2:12, 5:15].all()  # box rows 12-21, cols 25-34 in region coordinates
    assert m[1, 5, 10] > 0.8 and m[1, 25, 30] < 1e-3  # the positive blob at (x 30, y 15)
    assert m[2, 25, 30] > 0.8 and m[2, 5, 10] < 1e-3  # the negative point is elsewhere


def test_fine_tuning_a_refiner_keeps_the_init_one_unless_beaten(data, tmp_path):  # noqa: F811
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    cfg["mask_refiner"] = {"width": 8, "dilations": [1, 2], "prompt_channels": 3}
    SamNucleusModel(cfg).save_pretrained(tmp_path / "init")
    # lr 0: the refiner cannot change, so no validation beats the init's own
    run = small_run(data, tmp_path / "ft", tmp_path / "init", val_every=1, lr=0.0)
    lines: list[str] = []
    best = train_refiner(run, log=lines.append)
    assert best["iteration"] == 0 and any(line.startswith("init's refiner") for line in lines)
    assert (tmp_path / "ft" / "best" / "config.json").is_file()
    # asking for init's own shape is fine-tuning too; another shape stops with a message
    run = small_run(data, tmp_path / "ft1", tmp_path / "init", width=8, dilations=(1, 2), lr=0.0)
    assert train_refiner(run, log=lines.append)["iteration"] == 0
    with pytest.raises(PathsegError, match="--feature-channels shape a new refiner only"):
        train_refiner(small_run(data, tmp_path / "ft2", tmp_path / "init", width=16), log=lines.append)
    with pytest.raises(PathsegError, match="corrections must be >= 0"):
        train_refiner(small_run(data, tmp_path / "ft3", tmp_path / "init", corrections=-1), log=lines.append)
    with pytest.raises(PathsegError, match="box jitter must be in"):
        train_refiner(small_run(data, tmp_path / "ft4", tmp_path / "init", box_jitter=0.5), log=lines.append)


def test_a_refiner_can_read_the_ais_decoders_features(data, tmp_path):  # noqa: F811
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    SamNucleusModel(cfg).eval().save_pretrained(tmp_path / "base")
    run = small_run(data, tmp_path / "ref", tmp_path / "base", val_every=2, width=8, dilations=(1,), feature_channels=4)
    train_refiner(run, log=lambda *a: None)
    model = SamNucleusModel.from_pretrained(tmp_path / "ref" / "best").eval()
    assert model.config["mask_refiner"]["feature_channels"] == 4
    assert model.config["mask_refiner"]["feature_in"] == model.ais.out_conv.in_channels
    # the projection learns with the refiner: the loss reaches its weights through the guide
    x = torch.randn(1, 3, 64, 64)
    embedding, maps, features = model.guide_inputs(x)
    assert torch.allclose(maps, model.ais(*model.sam.image_encoder.forward_features(x)))
    model.refiner.zero_grad()
    guide = model.refiner.guide(x, maps, features)
    coarse = torch.randn(2, 1, 64, 64)
    model.refiner(coarse, guide.expand(2, -1, -1, -1), torch.zeros(2, 3, 64, 64))[0].sum().backward()
    assert guide.shape[1] == 10 and model.refiner.project.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reads 32 AIS feature channels"):
        model.refiner.guide(x, maps, None)
    # the predictor keeps 10-channel guides, and its cache depends on the projection's weights
    rgb, _ = synthetic_nuclei((150, 170), n=6, radius=10, seed=3)
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5)
    assert all(g.shape[0] == 10 for g in p.guides)
    assert p.predict(box=np.array([20, 20, 60, 60])).masks.shape[1:] == (150, 170)
    before = p.signature(rgb, 0.5)["weights"]
    with torch.no_grad():
        model.refiner.project.bias.add_(1.0)
    assert Predictor(model).signature(rgb, 0.5)["weights"] != before
    with pytest.raises(PathsegError, match="feature channels"):
        train_refiner(small_run(data, tmp_path / "bad", tmp_path / "base", feature_channels=-1), log=lambda *a: None)


def test_a_box_fitting_model_trains_every_box_candidate(monkeypatch):
    from pathseg.train.refine import refiner_loss

    model = refined_model()
    labels = torch.from_numpy(synthetic_nuclei((64, 64), n=3, radius=8, seed=2)[1].astype(np.int64))[None]
    x = (torch.rand(1, 3, 64, 64) - 0.5) * 2
    with torch.no_grad():
        embedding, maps, features = model.guide_inputs(x)
    guide = model.refiner.guide(x, maps, features)
    calls = []
    decode = model.sam.decode

    def spy(*a, multimask_output, **k):
        calls.append(multimask_output)
        return decode(*a, multimask_output=multimask_output, **k)

    monkeypatch.setattr(model.sam, "decode", spy)
    losses = {}
    for fit in (False, True):
        model.config["box_fit"] = fit
        calls.clear()
        rng = np.random.default_rng(0)
        losses[fit] = refiner_loss(model, embedding, guide, labels, rng, 2, 1, use_box=True).item()
        assert calls == [fit, False]  # 3 candidates for a first box only when they are fitted to it
    assert np.isfinite(list(losses.values())).all() and losses[True] != losses[False]
    calls.clear()  # no corrective round: the first prompt alone learns
    assert np.isfinite(refiner_loss(model, embedding, guide, labels, np.random.default_rng(0), 2, 0, False).item())
    assert calls == [True]


def test_simulated_boxes_are_exact_without_jitter_and_bounded_with_it():
    from pathseg.train.prompts import first_prompts

    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:30] = True  # rows 5-14, columns 10-29: the box (10, 5, 30, 15), longer side 20
    rng = np.random.default_rng(0)
    _, _, exact = first_prompts([mask] * 3, rng, use_box=True, box_jitter=0.0)
    assert exact.tolist() == [[10.0, 5.0, 30.0, 15.0]] * 3
    _, _, loose = first_prompts([mask] * 200, rng, use_box=True, box_jitter=0.1)
    moved = (loose - exact[:1]).abs()
    assert moved.max() <= 2.0 and moved.max() > 1.5  # each edge moves by up to 0.1 x 20 px


def test_a_jittered_box_of_a_thin_object_never_inverts():
    from pathseg.nuclei.boxes import jitter_box

    rng = np.random.default_rng(0)
    thin = np.array([10.0, 5.0, 11.0, 25.0])  # 1 px wide, 20 px tall: edges may move by up to 2 px
    boxes = np.array([jitter_box(thin, 0.1, rng) for _ in range(500)])
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert np.abs(boxes - thin).max() <= 2.0 + 1e-9  # swapping crossed edges keeps them within the jitter
    square = np.array([0.0, 0.0, 20.0, 20.0])  # edges that cannot cross are moved exactly as before the swap existed
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert np.allclose(jitter_box(square, 0.1, a), square + b.uniform(-2.0, 2.0, 4))


def test_a_box_refiner_is_trained_on_boxes_shipped_beside_the_refiner_and_answers_boxes_alone(
    data,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    import pathseg.train.refine as refine_module
    from tests.conftest import load_tool

    cfg = refined_model().config
    cfg["mask_refiner"].update(prompt_channels=3, feature_in=32, feature_channels=2)
    bundled = SamNucleusModel(cfg).eval()
    folder = save_with_add_on_refiner(bundled, tmp_path / "bundled")
    # training on boxes alone: every simulated first prompt is a box, the feature projection stays frozen
    kinds = []
    loss = refine_module.refiner_loss
    monkeypatch.setattr(refine_module, "refiner_loss", lambda *a: kinds.append(a[7]) or loss(*a))
    best = train_refiner(small_run(data, tmp_path / "box", folder, prompts="box", lr=1e-2), log=lambda *a: None)
    assert kinds == [True, True] and "msa_box" in best
    saved = torch.load(tmp_path / "box" / "checkpoint.pt", weights_only=True)["refiners"]
    last = {k.removeprefix("refiner."): v for k, v in saved.items()}
    assert torch.equal(last["project.weight"], bundled.refiner.project.weight)
    assert not torch.equal(last["out.weight"], bundled.refiner.out.weight)
    with pytest.raises(PathsegError, match="prompts must be"):
        train_refiner(small_run(data, tmp_path / "bad", folder, prompts="points"), log=lambda *a: None)
    # shipped beside the bundled refiner (its projection not stored again); a moved projection is refused
    run = SamNucleusModel.from_pretrained(folder)
    run.refiner.load_state_dict(last)
    with torch.no_grad():  # a box refiner that blanks everything: its effect must show in the masks
        run.refiner.out.bias.fill_(-100.0)
    moved = SamNucleusModel.from_pretrained(folder)
    with torch.no_grad():
        moved.refiner.project.bias.add_(1.0)
    tool = load_tool("bundle_nuclei_model")
    with pytest.raises(SystemExit, match="feature projection differs"):
        tool.add_box_refiner(moved.save_pretrained(tmp_path / "moved"), folder)
    tool.add_box_refiner(run.save_pretrained(tmp_path / "run"), folder)
    with pytest.raises(SystemExit, match="no box refiner yet"):
        tool.add_box_refiner(tmp_path / "run", folder)
    shipped = SamNucleusModel.from_pretrained(folder)
    assert shipped.box_refiner.project is None
    for k, v in shipped.box_refiner.state_dict().items():
        assert torch.equal(v, run.refiner.state_dict()[k]), k
    for k, v in shipped.refiner.state_dict().items():
        assert torch.equal(v, bundled.refiner.state_dict()[k]), k
    # a box alone takes the box refiner; a point, or a box with a point, the bundled refiner
    rgb, _ = synthetic_nuclei((200, 230), n=10, radius=10, seed=5)
    p = Predictor(shipped, box_fit=False, box_from_ais=None)
    p.set_image(rgb, mpp=0.5)
    box = np.array([30, 40, 70, 80])
    assert not p.predict(box=box).masks.any()
    assert p.predict(points=np.array([[50, 60]]), labels=np.array([1])).masks.any()
    assert p.predict(box=box, points=np.array([[50, 60]]), labels=np.array([1])).masks.any()
    with pytest.raises(PathsegError, match="box_refiner needs a mask_refiner"):
        SamNucleusModel({**cfg, "box_refiner": {**cfg["mask_refiner"], "feature_channels": 4, "feature_in": 32}})


def test_each_refiner_learns_the_prompts_it_answers(data, tmp_path):  # noqa: F811
    cfg = refined_model().config
    cfg["mask_refiner"].update(prompt_channels=3, feature_in=32, feature_channels=2)
    cfg["correction_refiner"] = {"width": 4, "dilations": [1], "prompt_channels": 3}
    cfg["box_refiner"] = dict(cfg["mask_refiner"])
    base = SamNucleusModel(cfg)
    folder = base.save_pretrained(tmp_path / "bundled")  # shaped as the bundled model

    def learnt(run) -> dict[str, bool]:
        """Which refiners the run's last checkpoint moved."""
        state = torch.load(run / "checkpoint.pt", weights_only=True)["refiners"]
        return {
            n: not all(torch.equal(v, state[f"{n}.{k}"]) for k, v in getattr(base, n).state_dict().items())
            for n in ("refiner", "correction_refiner", "box_refiner")
        }

    # points, boxes, corrections with and without mask feedback: every refiner answers some round and learns
    lines: list[str] = []
    train_refiner(small_run(data, tmp_path / "all", folder, lr=1e-2, iterations=4, val_every=100), log=lines.append)
    assert "training refiner, correction_refiner, box_refiner" in lines
    assert learnt(tmp_path / "all") == {"refiner": True, "correction_refiner": True, "box_refiner": True}
    # boxes alone, no corrections: the box refiner alone (the main refiner's projection, which it reads, stays)
    run = small_run(data, tmp_path / "box", folder, prompts="box", corrections=0, lr=1e-2, val_every=100)
    train_refiner(run, log=lambda *a: None)
    assert learnt(tmp_path / "box") == {"refiner": False, "correction_refiner": False, "box_refiner": True}
    # a checkpoint of an older pathseg (the refiner alone) stops with a message rather than a key error
    torch.save({"refiner": {}, "iteration": 1}, tmp_path / "box" / "checkpoint.pt")
    with pytest.raises(PathsegError, match="holds no 'refiners' weights"):
        train_refiner(run, log=lambda *a: None)
