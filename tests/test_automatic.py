"""AIS post-processing and tiling: one watershed on stitched maps, no nucleus split or duplicated at tile borders."""

import numpy as np
import pytest

from pathseg.metrics import instance_scores
from pathseg.nuclei.automatic import AISParams, AutomaticSegmenter, watershed_from_maps
from pathseg.nuclei.targets import distance_targets
from tests.conftest import synthetic_nuclei


def test_targets_shape_and_range(nuclei_image):
    _, labels = nuclei_image
    t = distance_targets(labels)
    assert t.shape == (3,) + labels.shape and t.dtype == np.float32
    assert np.array_equal(t[0] > 0.5, labels > 0)
    inside = labels > 0
    assert t[1][inside].min() < 0.2 and t[2][inside].min() == 0.0
    assert (t[1][~inside] == 1).all() and (t[2][~inside] == 1).all()


def test_watershed_recovers_instances_from_ideal_maps(nuclei_image):
    _, labels = nuclei_image
    t = distance_targets(labels)
    seg = watershed_from_maps(t[0], t[1], t[2], AISParams())
    assert instance_scores(labels, seg)["sa50"] > 0.95


def test_nuclei_with_a_faint_foreground_can_be_dropped(nuclei_image):
    _, labels = nuclei_image
    t = distance_targets(labels)
    ids = np.unique(labels[labels > 0])
    faint = np.isin(labels, ids[::2])  # every other nucleus
    t[0][faint] = 0.6  # still foreground (> 0.5), but less sure than the others (1.0)
    kept = watershed_from_maps(t[0], t[1], t[2], AISParams())
    assert kept.max() == len(ids)
    dropped = watershed_from_maps(t[0], t[1], t[2], AISParams(min_foreground=0.7))
    assert dropped.max() == len(ids) - len(ids[::2]) and not (dropped[faint] > 0).any()
    assert np.array_equal(dropped > 0, (kept > 0) & ~faint)


def _disk_with_halo(radius: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Maps of two nuclei whose foreground falls steeply at ``radius`` (0.9 -> 0.55 within 1 px), then slowly to 0
    over 8 px (a halo): where a nucleus ends is the steep edge, whatever level a global threshold sits at."""
    yy, xx = np.mgrid[:64, :128]
    r = np.minimum(np.hypot(yy - 32, xx - 32), np.hypot(yy - 32, xx - 96))
    fg = np.interp(r, [0, radius, radius + 1, radius + 9], [0.9, 0.9, 0.55, 0.0]).astype(np.float32)
    dist = np.clip(r / radius, 0, 1).astype(np.float32)
    return fg, dist


def test_each_outline_can_take_the_level_where_the_foreground_is_steepest():
    fg, dist = _disk_with_halo(10.0)
    base = dict(foreground_threshold=0.4, foreground_smoothing=0.0, distance_smoothing=0.0)
    plain = watershed_from_maps(fg, dist, dist, AISParams(**base))
    levels = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    steep = watershed_from_maps(fg, dist, dist, AISParams.of({**base, "outline_levels": levels}))
    assert plain.max() == steep.max() == 2
    true_area = np.pi * 10.5**2  # the steep edge runs from r = 10 to 11
    areas = np.bincount(steep.ravel())[1:]
    assert np.all(np.abs(areas - true_area) < 0.1 * true_area)  # on the edge, not in the halo
    assert np.all(np.bincount(plain.ravel())[1:] > 1.4 * true_area)  # the global 0.4 cuts into the halo
    assert np.array_equal(steep > 0, (plain > 0) & (fg > 0.55))  # each nucleus is its own region, cut
    # levels from a config file (a JSON list) and an empty list (off) are accepted
    assert AISParams.of({"outline_levels": []}).outline_levels == ()
    assert np.array_equal(watershed_from_maps(fg, dist, dist, AISParams.of({**base, "outline_levels": []})), plain)


def _fake_predictor(rgb: np.ndarray) -> np.ndarray:
    """Maps computed from the tile alone (as a network would): nuclei are the dark pixels."""
    from scipy import ndimage as ndi

    fg = rgb[..., 0] < 150
    labels, _ = ndi.label(fg)
    return distance_targets(labels)


def test_tiled_equals_untiled_and_border_nuclei_stay_whole():
    rgb, gt = synthetic_nuclei((300, 340), n=40, radius=11, seed=5)
    whole = AutomaticSegmenter(_fake_predictor, tile=1024, halo=0)
    whole.initialize(rgb)
    tiled = AutomaticSegmenter(_fake_predictor, tile=112, halo=32)  # inner tiles of 48 px: many borders
    tiled.initialize(rgb)
    a, b = whole.generate(), tiled.generate()
    # the same nuclei, and every ground-truth nucleus crossing a tile border is found once and whole
    assert instance_scores(a, b)["sa50"] == 1.0
    assert int(b.max()) == int(gt.max())
    assert instance_scores(gt, b)["msa"] > 0.9


def test_generate_is_cheap_and_reusable(nuclei_image):
    rgb, _ = nuclei_image
    seg = AutomaticSegmenter(_fake_predictor, tile=128, halo=32)
    seg.initialize(rgb)
    few = seg.generate(min_size=10_000)  # bigger than any synthetic nucleus
    many = seg.generate()
    assert few.max() == 0 and many.max() > 0


def test_ais_mpp_sets_the_network_pixel_size_and_keeps_lengths_in_model_pixels():
    import torch

    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    torch.manual_seed(0)
    model = SamNucleusModel(compact_config(mpp=0.5, tile=128)).eval()
    seen = []
    predict = model.predict_maps
    model.predict_maps = lambda rgb: seen.append(rgb.shape[:2]) or predict(rgb)
    rgb = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)  # at 0.25 µm/px
    assert model.ais_mpp == 0.5  # default: the model's own pixel size
    seg = model.initialized_segmenter(rgb, 0.25)
    assert seen[-1] == (50, 60) and seg.maps.shape == (3, 100, 120) and seg.scale == 2.0
    model.config["ais_mpp"] = 0.4
    seg = model.initialized_segmenter(rgb, 0.25)
    assert seen[-1] == (62, 75)  # 100 * 0.25 / 0.4 = 62.5 -> 62, 120 * 0.25 / 0.4 = 75
    assert seg.maps.shape == (3, 100, 120) and seg.scale == 2.0  # σ and min_size still in 0.5 µm/px pixels
    assert model.segment(rgb, 0.25).shape == (100, 120)


def test_ais_tta_averages_mirrored_views_into_mirror_equivariant_maps():
    import pytest
    import torch

    from pathseg.errors import PathsegError
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    torch.manual_seed(0)
    model = SamNucleusModel(compact_config(mpp=0.5, tile=128)).eval()
    rgb = np.random.default_rng(1).integers(0, 255, (64, 48, 3), dtype=np.uint8)  # multiples of 16: no padding
    single = model.predict_maps(rgb)
    assert model.ais_tta == 1 and not np.allclose(single[:, :, ::-1], model.predict_maps(rgb[:, ::-1]), atol=1e-4)
    model.config["ais_tta"] = 2
    two = model.predict_maps(rgb)
    assert two.dtype == np.float32 and two.shape == (3, 64, 48)
    np.testing.assert_allclose(two, (single + model._maps_once(rgb[:, ::-1])[:, :, ::-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(two[:, :, ::-1], model.predict_maps(rgb[:, ::-1]), atol=1e-5)  # left-right
    model.config["ais_tta"] = 4
    four = model.predict_maps(rgb)
    for axes in [(1,), (0,), (0, 1)]:  # every mirror of the image gives the mirrored maps
        got = model.predict_maps(np.flip(rgb, axes))
        np.testing.assert_allclose(np.flip(four, tuple(a + 1 for a in axes)), got, atol=1e-5)
    model.config["ais_tta"] = 3
    with pytest.raises(PathsegError, match="ais_tta must be 1, 2 or 4"):
        model.predict_maps(rgb)


def test_ais_shift_moves_each_views_maps_back_by_the_decoders_bias():
    import pytest
    import torch

    from pathseg.errors import PathsegError
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    torch.manual_seed(0)
    model = SamNucleusModel(compact_config(mpp=0.5, tile=128)).eval()
    rgb = np.random.default_rng(2).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    plain = model.predict_maps(rgb)
    assert model.ais_shift is None
    model.config["ais_shift"] = [1, 2]  # whole pixels: maps read 1 px further down and 2 px further right
    moved = model.predict_maps(rgb)
    assert moved.dtype == np.float32 and moved.shape == plain.shape
    np.testing.assert_allclose(moved[:, :-1, :-2], plain[:, 1:, 2:], atol=1e-6)
    model.config["ais_shift"] = [0.0, 0.5]  # sub-pixel: bilinear, halfway between neighbours
    np.testing.assert_allclose(model.predict_maps(rgb)[:, :, :-1], (plain[:, :, :-1] + plain[:, :, 1:]) / 2, atol=1e-5)
    model.config.update(ais_shift=[0.0, 1.0], ais_tta=2)  # undone in each view's frame, before mirroring back
    mirrored = model._maps_once(rgb[:, ::-1])
    expect = (
        np.pad(plain[:, :, 1:], ((0, 0), (0, 0), (0, 1)), mode="edge")
        + np.pad(mirrored[:, :, 1:], ((0, 0), (0, 0), (0, 1)), mode="edge")[:, :, ::-1]
    ) / 2
    np.testing.assert_allclose(model.predict_maps(rgb), expect, atol=1e-5)
    for bad in ([0.5], [0.1, 9.0], "0.4,0.4", [True, 0.0]):
        model.config["ais_shift"] = bad
        with pytest.raises(PathsegError, match="ais_shift must be"):
            model.predict_maps(rgb)


def test_a_compact_model_still_trains_after_inference():
    """Inference runs folded channels-last copies (``inference_nets``) made of ordinary tensors; the model's own
    weights stay as they were, so training (e.g. a refiner fine-tuned after validating the model it starts from)
    can still backpropagate through them."""
    import torch

    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    torch.manual_seed(0)
    model = SamNucleusModel(compact_config(mpp=0.5, tile=128)).eval()
    model.segment(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8), 0.5)
    folded = model.inference_nets()[0].stages[0][0][0].weight
    assert folded.is_contiguous(memory_format=torch.channels_last) and not folded.is_inference()
    conv = model.sam.image_encoder.stages[0][0][0].weight
    assert not any(p.is_inference() for p in model.parameters())
    model.sam.image_encoder(torch.rand(1, 3, 32, 32)).sum().backward()
    assert conv.grad is not None


def test_tune_ais_takes_a_folder_or_a_bundled_nucleus_models_name(tmp_path):
    import importlib.util
    from pathlib import Path

    import pytest

    from pathseg.models.zoo import WEIGHTS_DIR

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_ais.py"
    spec = importlib.util.spec_from_file_location("tune_ais", path)
    tune_ais = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune_ais)
    assert tune_ais.model_folder(tmp_path) == tmp_path  # a folder as it is
    assert tune_ais.model_folder(Path("pathseg_nuclei_cpu")) == WEIGHTS_DIR / "pathseg_nuclei_cpu"
    with pytest.raises(SystemExit, match="copy its folder"):  # --write never changes the installed model
        tune_ais.model_folder(Path("pathseg_nuclei_cpu"), write=True)
    with pytest.raises(SystemExit, match="not a bundled nucleus model \\(pathseg_nuclei_cpu\\)"):
        tune_ais.model_folder(Path("pathseg_tissue"))  # a tissue model is no choice here


def test_objects_of_flat_fill_are_dropped_and_stained_ones_kept(nuclei_image):
    from skimage.segmentation import relabel_sequential

    from pathseg.nuclei.automatic import drop_flat_fill

    rgb, gt = nuclei_image
    rgb = rgb.copy()
    rgb[:, :20] = 0  # a blacked-out strip, as padding leaves it
    wholly_black = [i for i in np.unique(gt)[1:] if (np.nonzero(gt == i)[1] < 20).all()]
    labels = relabel_sequential(np.where(np.isin(gt, wholly_black), 0, gt).astype(np.uint32))[0]
    labels[labels > 0] += 1  # nuclei: ids 2.., some cut by the strip (black and stained pixels)
    labels[5:60, 0:6][labels[5:60, 0:6] == 0] = 1  # an object wholly in the fill, as a border response makes one
    expected = relabel_sequential(np.where(labels == 1, 0, labels))[0]
    noisy = rgb.copy()
    noisy[:, :20] = np.random.default_rng(0).integers(0, 3, (rgb.shape[0], 20, 3))  # JPEG-like noise: still flat
    for image in (rgb, noisy):
        assert np.array_equal(drop_flat_fill(labels, image), expected)
    stained = rgb.copy()
    stained[:, :20] = np.random.default_rng(1).integers(60, 200, (rgb.shape[0], 20, 3))
    assert drop_flat_fill(labels, stained) is labels  # nothing flat: the same array back, nothing copied


def test_the_bundled_model_finds_no_nucleus_in_black_padding():
    from pathseg.api import segment_nuclei

    black = np.zeros((256, 256, 3), np.uint8)  # its network answers the left edge with a nucleus-like strip
    assert segment_nuclei(black, mpp=0.5).labels.max() == 0


def test_ais_params_are_checked_by_name_and_range():
    from pathseg.errors import PathsegError
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
    from pathseg.nuclei.automatic import checked_ais_params

    with pytest.raises(ValueError, match="unknown AIS parameter"):
        AISParams.of({"threshold": 0.5})
    with pytest.raises(ValueError, match="distance_smoothing must be >= 0"):
        checked_ais_params({"distance_smoothing": -1})
    with pytest.raises(ValueError, match="outline_levels must lie between 0 and 1"):
        checked_ais_params({"outline_levels": [0.5, 1.0]})
    assert AISParams.of({"center_distance_threshold": 1.1}).center_distance_threshold == 1.1  # code may force seeds
    model = SamNucleusModel(compact_config(mpp=0.5, tile=128))
    model.set_ais_params(min_foreground=0.5, min_size=10)
    assert model.ais_params["min_foreground"] == 0.5 and model.ais_params["min_size"] == 10
    with pytest.raises(PathsegError, match="min_foreground must lie in"):
        model.set_ais_params(min_foreground=-0.1)
    assert model.ais_params["min_foreground"] == 0.5  # a refused change leaves the model as it was


def test_watershed_by_parts_equals_one_watershed():
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from pathseg.nuclei.automatic import watershed_by_parts

    for seed in range(5):
        rng = np.random.default_rng(seed)
        surface = ndi.gaussian_filter(rng.random((150, 170)), 2).astype(np.float32)
        mask = ndi.gaussian_filter(rng.random((150, 170)), 3) > 0.5  # parts of every size, some touching diagonally
        mask[::7, ::7] ^= True
        markers, _ = ndi.label((surface < np.quantile(surface, 0.2)) & mask)
        for block in (8, 16, 64):
            assert np.array_equal(
                watershed_by_parts(surface, markers, mask, block), watershed(surface, markers, mask=mask)
            )
