"""Interactive prompts: routing to tiles, whole objects across tile borders, embedding cache signatures."""

import logging

import numpy as np
import pytest
from scipy.ndimage import find_objects

from pathseg.errors import PathsegError
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.nuclei.interactive import Prediction, Predictor, paint_objects
from pathseg.nuclei.simulate import simulate_prompts
from tests.conftest import synthetic_nuclei


@pytest.fixture(scope="module")
def model():
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    return SamNucleusModel(cfg).eval()


class OraclePredictor(Predictor):
    """The network replaced by the ground truth seen through the window: objects are cut at the window edge,
    exactly as a real model would see them, so the test checks the routing and re-centring logic."""

    gt: np.ndarray

    def _predict_in(self, box_yx, emb, guide, pts, lbl, bx, mask_input, multimask):
        y0, x0, y1, x1 = box_yx
        x, y = (pts[lbl == 1][0] if pts is not None else (bx[:2] + bx[2:]) / 2).astype(int)
        obj = self.gt == self.gt[y, x]
        m = obj[y0:y1, x0:x1][None].repeat(3, 0)
        return m, np.array([0.9, 0.8, 0.7]), None, box_yx


def test_object_across_a_tile_border_comes_out_whole(model):
    rgb, gt = synthetic_nuclei((300, 300), n=40, radius=12, seed=2)
    p = OraclePredictor(model, halo=4)  # a thin halo, so that objects near a tile's edge are cut off
    p.gt = gt
    p.set_image(rgb, mpp=0.5)
    assert len(p.tiles) > 1
    crossing = 0
    for lab in range(1, int(gt.max()) + 1):
        ys, xs = np.nonzero(gt == lab)
        cy, cx = int(ys.mean()), int(xs.mean())
        tile = p._tile_for(np.array([cx, cy]))
        y0, x0, y1, x1 = tile.outer
        if not (ys.min() < y0 or ys.max() >= y1 or xs.min() < x0 or xs.max() >= x1):
            continue  # this object lies inside its tile's window
        crossing += 1
        r = p.predict(points=np.array([[cx, cy]]), labels=np.array([1]))
        assert np.array_equal(r.masks[0], gt == lab), lab
    assert crossing > 0


def test_prompts_and_shapes(model):
    rgb, _ = synthetic_nuclei((200, 260), n=10, radius=12, seed=3)
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5)
    r = p.predict(points=np.array([[50, 60], [80, 90]]), labels=np.array([1, 0]))
    assert r.masks.shape == (3, 200, 260) and r.iou.shape == (3,)
    single = p.predict(box=np.array([40, 50, 70, 80]), multimask=False)
    assert single.masks.shape == (1, 200, 260)
    both = p.predict(points=np.array([[55, 65]]), labels=np.array([1]), box=np.array([40, 50, 70, 80]))
    again = p.predict(points=np.array([[55, 65]]), labels=np.array([1]), mask_input=both.mask_prompt(0))
    assert again.masks.shape == (3, 200, 260)
    with pytest.raises(ValueError, match="at least one"):
        p.predict()
    for bad, why in ((rgb.transpose(2, 0, 1), "channels-first"), (rgb.tolist(), "expected an image array")):
        with pytest.raises(ValueError, match=why):  # not images; they used to fail deep inside torch
            p.set_image(bad, mpp=0.5)
    p.set_image(rgb[..., 0], mpp=0.5)  # grey: converted as a grey file is, not refused
    assert p.image.shape == (200, 260, 3) and (p.image[..., 2] == rgb[..., 0]).all()
    with pytest.raises(ValueError, match="positive pixel size"):
        p.set_image(rgb, mpp=0)
    with pytest.raises(PathsegError, match="not the magnification"):  # 40 µm/px: resampled 95x a side, refused
        p.set_image(rgb, mpp=40)


def test_embedding_cache_is_reused_only_when_the_signature_matches(model, tmp_path, caplog):
    rgb, _ = synthetic_nuclei((200, 200), n=10, radius=12, seed=4)
    cache = tmp_path / "emb.safetensors"
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5, cache=cache)
    first = [e.clone() for e in p.embeddings]
    p2 = Predictor(model)
    p2.set_image(rgb, mpp=0.5, cache=cache)
    assert all((a == b).all() for a, b in zip(first, p2.embeddings, strict=True))
    other = rgb.copy()
    other[0, 0] = 0
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        p2.set_image(other, mpp=0.5, cache=cache)
    assert "does not match (input differ)" in caplog.text
    p3 = Predictor(model, halo=8)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        p3.set_image(other, mpp=0.5, cache=cache)
    assert "halo" in caplog.text
    data = cache.read_bytes()
    for junk in (data[: len(data) // 2], b"not a cache at all"):  # truncated or foreign: recomputed, rewritten
        cache.write_bytes(junk)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pathseg"):
            p3.set_image(other, mpp=0.5, cache=cache)
        assert "is unreadable" in caplog.text and cache.read_bytes() != junk
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pathseg"):  # a cache that cannot be written: segmentation goes on
        p3.set_image(other, mpp=0.5, cache=blocker / "emb.safetensors")
    assert "cannot write the embedding cache" in caplog.text and p3.predict(points=[[50, 50]]).masks.shape[0] == 3


def test_compact_prompts_are_decoded_on_the_window_size_they_were_trained_on():
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    cfg["prompt_window"] = 64  # trained on 64-px crops: prompts see 4 x 4 tokens around them
    model = SamNucleusModel(cfg).eval()
    seen = []
    decode = model.sam.decode

    def spy(emb, points=None, boxes=None, mask_input=None, multimask_output=True):
        seen.append((tuple(emb.shape[-2:]), None if points is None else points[0].numpy().copy()))
        return decode(emb, points, boxes, mask_input, multimask_output)

    model.sam.decode = spy
    rgb, _ = synthetic_nuclei((128, 128), n=6, radius=8, seed=7)
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5)
    r = p.predict(points=np.array([[100, 90]]), labels=np.array([1]))
    assert seen[0][0] == (4, 4) and np.allclose(seen[0][1], [[[36, 26]]])  # part (64, 64)-(128, 128)
    assert r.embed_window == (64, 64, 128, 128)
    again = p.predict(points=np.array([[100, 90]]), labels=np.array([1]), mask_input=r.mask_prompt(0))
    assert seen[-1][0] == (4, 4) and again.masks.shape == (3, 128, 128)


def test_a_box_bounds_its_mask(model):
    rgb, gt = synthetic_nuclei((200, 200), n=8, radius=14, seed=5)
    lab = int(gt[tuple(np.argwhere(gt > 0)[0])])
    ys, xs = np.nonzero(gt == lab)
    # a box that cuts the object: 4 px in from its left and top edges
    box = np.array([xs.min() + 4, ys.min() + 4, xs.max() + 1, ys.max() + 1], dtype=float)
    obj = gt == lab
    yy, xx = np.mgrid[:200, :200] + 0.5
    results = {}
    for margin in (0.0, 2.0, None):
        p = OraclePredictor(model, box_margin=margin)
        p.gt = gt
        p.set_image(rgb, mpp=0.5)
        results[margin] = p.predict(box=box, multimask=False).masks[0]
    inside = (xx > box[0]) & (xx < box[2]) & (yy > box[1]) & (yy < box[3])
    assert np.array_equal(results[0.0], obj & inside)
    grown = (xx > box[0] - 2) & (xx < box[2] + 2) & (yy > box[1] - 2) & (yy < box[3] + 2)
    assert np.array_equal(results[2.0], obj & grown)
    assert np.array_equal(results[None], obj)  # unbounded, as SAM
    assert results[0.0].sum() < results[2.0].sum() < results[None].sum()


def test_prompts_run_at_the_models_prompt_pixel_size(tmp_path):
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    cfg["prompt_mpp"] = 0.25  # the network sees the image at twice its pixel count
    model = SamNucleusModel(cfg).eval()
    rgb, _ = synthetic_nuclei((100, 120), n=6, radius=8, seed=8)
    p = Predictor(model)
    p.set_image(rgb, mpp=0.5, cache=tmp_path / "emb.safetensors")
    assert p.factor == 2.0 and p._work.shape[:2] == (200, 240)
    r = p.predict(points=np.array([[60, 50]]), labels=np.array([1]))
    assert r.masks.shape == (3, 100, 120)
    model.config["prompt_mpp"] = 0.5
    assert p.signature(rgb, 0.5)["network_mpp"] == "0.5"  # a cache made at 0.25 µm/px is not reused


def test_a_box_takes_the_automatic_nucleus_it_matches(model, monkeypatch):
    from pathseg.nuclei.boxes import matching_nucleus

    rgb, gt = synthetic_nuclei((200, 200), n=8, radius=14, seed=5)
    calls = []

    def automatic(image, mpp, *args, **kwargs):  # the automatic segmentation, here the ground truth
        calls.append(mpp)
        return gt.astype(np.uint32)

    monkeypatch.setattr(model, "segment", automatic)
    monkeypatch.setitem(model.config, "box_from_ais", 0.8)
    assert model.ais is not None and model.box_from_ais == 0.8
    lab = int(gt[tuple(np.argwhere(gt > 0)[0])])
    ys, xs = np.nonzero(gt == lab)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    p, off = Predictor(model), Predictor(model, box_from_ais=None)
    assert p.box_from_ais == 0.8 and Predictor(model, box_from_ais=0.5).box_from_ais == 0.5
    with pytest.raises(PathsegError, match="box_from_ais must be"):
        Predictor(model, box_from_ais=2)
    p.set_image(rgb, mpp=0.5)
    off.set_image(rgb, mpp=0.5)
    assert np.array_equal(p.predict(box=box, multimask=False).masks[0], gt == lab)
    assert not np.array_equal(off.predict(box=box, multimask=False).masks[0], gt == lab)  # the random decoder's
    # a box no nucleus matches well enough, several candidates, or points: the decoder's masks
    whole = np.array([0, 0, 200, 200], dtype=float)
    assert np.array_equal(p.predict(box=whole, multimask=False).masks, off.predict(box=whole, multimask=False).masks)
    assert np.array_equal(p.predict(box=box).masks, off.predict(box=box).masks)
    pts = dict(points=np.array([[xs.mean(), ys.mean()]]), labels=np.array([1]), box=box, multimask=False)
    assert np.array_equal(p.predict(**pts).masks, off.predict(**pts).masks)
    assert calls == [0.5]  # once per image, at the image's pixel size
    # the match itself: best bounding-box IoU among the nuclei in the box; none in an empty box
    found, iou, _ = matching_nucleus(gt, find_objects(gt), box + [1, 0, 1, 0])
    assert found == lab and 0.8 < iou < 1
    empty = np.zeros_like(gt)
    assert matching_nucleus(empty, [], box)[:2] == (0, 0.0)
    monkeypatch.setitem(model.config, "box_from_ais", 1.5)
    with pytest.raises(PathsegError, match="box_from_ais must be"):
        Predictor(model)


def test_box_prompts_segment_only_the_regions_they_fall_in(model, monkeypatch):

    _, gt = synthetic_nuclei((200, 200), n=12, radius=10, seed=3)
    rgb = np.repeat(gt.astype(np.uint8)[..., None], 3, axis=2)  # red = the nucleus id, so that ...
    crops = []

    def automatic(image, mpp, *args, **kwargs):  # ... a stand-in segmentation of any crop equals the truth in it
        crops.append(image.shape[:2])
        return image[..., 0].astype(np.uint32)

    monkeypatch.setattr(model, "segment", automatic)
    p = Predictor(model, box_from_ais=0.8, box_fit=False, ais_region=96, ais_halo=16)
    p.set_image(rgb, mpp=0.5)
    boxes = []
    for lab in np.unique(gt)[1:]:
        ys, xs = np.nonzero(gt == lab)
        boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float))
        assert np.array_equal(p.predict(box=boxes[-1], multimask=False).masks[0], gt == lab)
    assert len(boxes) == 12 and max(max(c) for c in crops) <= 96  # regions of the image, never all of it
    n = len(crops)
    for box in boxes:
        p.predict(box=box, multimask=False)
    assert len(crops) == n == len(p._automatic) < 16  # each region at most once, only those boxes fall in
    p._automatic.clear()
    p._automatic.keep = 2  # a bounded cache: only the most recent regions stay, the answers do not change
    for lab, box in zip(np.unique(gt)[1:], boxes, strict=True):
        assert np.array_equal(p.predict(box=box, multimask=False).masks[0], gt == lab)
        assert len(p._automatic) <= 2
    assert len(crops) >= 2 * n  # evicted regions were segmented again
    # a box larger than the halo, across region borders: answered from a region around it
    big = np.array([40, 40, 160, 160], dtype=float)
    whole = Predictor(model, box_from_ais=0.01, box_fit=False)
    whole.set_image(rgb, mpp=0.5)
    near = Predictor(model, box_from_ais=0.01, box_fit=False, ais_region=96, ais_halo=16)
    near.set_image(rgb, mpp=0.5)
    got = near.predict(box=big, multimask=False).masks
    assert got[0].any() and np.array_equal(got, whole.predict(box=big, multimask=False).masks)
    assert crops[-2] == (152, 152) and crops[-1] == (200, 200)  # the region around the box; the whole image
    n = len(crops)
    with pytest.raises(ValueError, match=r"box \(300, 300, 400, 400\) lies outside"):  # refused, nothing run
        near.predict(box=np.array([300, 300, 400, 400.0]), multimask=False)
    assert len(crops) == n
    with pytest.raises(PathsegError, match="ais_halo must be"):
        Predictor(model, ais_region=100, ais_halo=50)


def test_a_box_can_take_the_candidate_that_fits_it_best(model, monkeypatch):
    from pathseg.nuclei.boxes import box_iou, mask_box

    rgb, gt = synthetic_nuclei((200, 200), n=8, radius=14, seed=5)
    monkeypatch.setattr(model, "segment", lambda image, mpp, *a, **k: gt.astype(np.uint32))
    lab = int(gt[tuple(np.argwhere(gt > 0)[0])])
    ys, xs = np.nonzero(gt == lab)
    b = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    box = np.array([b[1], b[0], b[3], b[2]], dtype=float)
    three = Predictor(model, box_from_ais=None, box_fit=False)
    three.set_image(rgb, mpp=0.5)
    cands = three.predict(box=box)  # the decoder's 3 candidates
    fits = box_iou(np.array([b]), np.array([mask_box(m, cands.window) for m in cands.window_masks]))[0]
    fit = Predictor(model, box_from_ais=None, box_fit=True)
    fit.set_image(rgb, mpp=0.5)
    r = fit.predict(box=box, multimask=False)
    k = int(np.argmax(fits))
    assert r.window_masks.shape[0] == 1 and r.iou.tolist() == cands.iou[k : k + 1].tolist()
    assert np.array_equal(r.masks[0], cands.masks[k])
    # with the automatic segmentation among the candidates, its nucleus fits the box exactly and wins (a tie with
    # a decoder mask filling the box goes to the nucleus)
    both = Predictor(model, box_from_ais=0.01, box_fit=True)
    both.set_image(rgb, mpp=0.5)
    assert np.array_equal(both.predict(box=box, multimask=False).masks[0], gt == lab)
    assert both.predict(box=box).masks.shape[0] == 3  # several candidates asked for: the decoder's, untouched


def test_paint_objects_gives_a_shared_pixel_to_the_smaller_mask_or_the_first():
    big = np.ones((4, 6), bool)  # rows 0-3, cols 0-5
    small = np.ones((2, 2), bool)  # rows 2-3, cols 4-5 once placed: inside the big one
    objects = [(0, 0, big, 1), (2, 4, small, 2)]
    for objs in (objects, objects[::-1]):  # the order does not matter to "smaller"
        lab = paint_objects(objs, (5, 7), "smaller")
        assert (lab[2:4, 4:6] == 2).all() and (lab == 1).sum() == 24 - 4 and lab[4].max() == 0 and lab[:, 6].max() == 0
    lab = paint_objects(objects, (5, 7), "first")
    assert (lab[:4, :6] == 1).all() and (lab == 2).sum() == 0
    lab = paint_objects(objects[::-1], (5, 7), "first")
    assert (lab[2:4, 4:6] == 2).all()
    twins = [(0, 0, small, 7), (1, 1, small, 8)]  # equal areas keep their order: the later one is painted on top
    assert paint_objects(twins, (3, 3), "smaller")[1, 1] == 8
    assert paint_objects(twins, (3, 3), "first")[1, 1] == 7
    assert paint_objects([], (2, 2)).dtype == np.uint32 and not paint_objects([], (2, 2)).any()
    pred = Prediction(np.zeros((1, 8, 8), bool), (10, 20, 18, 28), np.ones(1), None, (40, 40))
    pred.window_masks[0, 2:4, 3:6] = True
    y0, x0, m, v = pred.object(0, 5)
    assert (y0, x0, m.shape, v) == (12, 23, (2, 3), 5) and m.all()  # cropped to its bounding box
    assert np.array_equal(paint_objects([pred.object(0, 5)], (40, 40)) == 5, pred.masks[0])
    pred.window_masks[:] = False
    assert not paint_objects([pred.object(0, 5)], (40, 40)).any()  # an empty mask paints nothing
    with pytest.raises(ValueError, match="overlap"):
        paint_objects(objects, (5, 7), "largest")


def test_simulated_prompts_compose_like_pathosam(model, monkeypatch):
    """Masks that spill onto a neighbour: the smaller nucleus keeps the shared pixels ("smaller"), or the nucleus
    prompted first does ("first")."""
    gt = np.zeros((40, 40), np.int64)
    gt[5:25, 5:25] = 1  # big
    gt[10:16, 25:31] = 2  # small, right beside it

    class Spilling(OraclePredictor):
        def _predict_in(self, box_yx, emb, guide, pts, lbl, bx, mask_input, multimask):
            m, iou, low, box_yx = super()._predict_in(box_yx, emb, guide, pts, lbl, bx, mask_input, multimask)
            grown = m.copy()
            grown[:, :, 2:] |= m[:, :, :-2]  # every mask spills 2 px to the right
            return grown, iou, low, box_yx

    pred = Spilling(model, box_margin=None)
    pred.gt = gt
    pred.set_image(np.zeros((40, 40, 3), np.uint8), 0.5)
    smaller = simulate_prompts(pred, gt, corrections=0, kinds=("box",))["box"]
    first = simulate_prompts(pred, gt, corrections=0, kinds=("box",), overlap="first")["box"]
    assert (smaller[10:16, 25:27] == 2).all()  # the big mask's spill lost to the small nucleus
    assert (first[10:16, 25:27] == 1).all()  # object 1 came first and kept them
    with pytest.raises(ValueError, match="overlap"):
        simulate_prompts(pred, gt, kinds=("box",), overlap="last")


def test_simulated_boxes_are_exact_or_jittered_the_same_way_for_every_model():
    from pathseg.nuclei.simulate import prompt_objects

    gt = np.zeros((60, 60), np.int64)
    gt[5:25, 10:20] = 1  # box (10, 5, 20, 25), longer side 20 px
    gt[30:40, 30:50] = 2

    class Recorder:  # stands in for a Predictor: records each box, answers with an empty mask
        def __init__(self):
            self.boxes = []

        def predict(self, box, multimask):
            self.boxes.append(np.asarray(box, float))
            return type("R", (), {"object": lambda _, i, lab: (0, 0, np.zeros((1, 1), bool), lab)})()

    exact, a, b = Recorder(), Recorder(), Recorder()
    prompt_objects(exact, gt, kinds=("box",))
    assert np.array_equal(exact.boxes, [[10, 5, 20, 25], [30, 30, 50, 40]])
    prompt_objects(a, gt, kinds=("box",), box_jitter=0.1)
    prompt_objects(b, gt, kinds=("box",), box_jitter=0.1)
    moved = np.abs(np.array(a.boxes) - exact.boxes)
    assert np.array_equal(a.boxes, b.boxes) and 0 < moved.max() <= 2.0  # same seed, up to 0.1 x 20 px
    with pytest.raises(ValueError, match="box_jitter"):
        prompt_objects(exact, gt, kinds=("box",), box_jitter=0.5)
