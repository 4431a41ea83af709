"""The map refiner: identity at start, blocks without seams, used by segment on finer images, a resumable run."""

import json

import numpy as np
import pytest
import torch

from pathseg.errors import PathsegError
from pathseg.models.map_refine import MapRefiner, refine_maps
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.train.map_refine import MapRefinerConfig, _turn, train_map_refiner
from tests.conftest import synthetic_nuclei
from tests.test_train import data  # noqa: F401  (fixture)

MEAN = torch.tensor([123.7, 116.3, 103.5]).view(3, 1, 1)
STD = torch.tensor([58.4, 57.1, 57.4]).view(3, 1, 1)


def _random_refiner(seed: int = 0) -> MapRefiner:
    torch.manual_seed(seed)
    ref = MapRefiner(width=8).eval()
    with torch.no_grad():
        ref.out.weight.normal_(0, 0.5)
    return ref


def test_a_new_map_refiner_returns_its_input_maps():
    maps = torch.rand(2, 3, 30, 40) * 0.98 + 0.01
    out = MapRefiner(width=8)(torch.randn(2, 3, 30, 40), maps)
    assert torch.allclose(out, maps, atol=1e-5)


def test_refined_maps_do_not_depend_on_the_block_size():
    rgb, _ = synthetic_nuclei((150, 170), n=12, radius=8, seed=1)
    maps = np.random.default_rng(0).random((3, 150, 170)).astype(np.float32)
    ref = _random_refiner()
    whole = refine_maps(ref, rgb, maps, MEAN, STD, block=1024)
    blocks = refine_maps(ref, rgb, maps, MEAN, STD, block=40)
    assert not np.allclose(whole, maps, atol=1e-3)  # the refiner changes the maps ...
    np.testing.assert_allclose(blocks, whole, atol=1e-5)  # ... the same way in blocks with a halo
    with pytest.raises(ValueError, match="differ in size"):
        refine_maps(ref, rgb, maps[:, :10], MEAN, STD)


def test_segment_refines_maps_only_on_images_finer_than_the_model(tmp_path):
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    plain = SamNucleusModel(cfg).eval()
    cfg["map_refiner"] = {"width": 8, "dilations": [1, 2, 4, 8]}
    refined = SamNucleusModel(cfg).eval()
    refined.load_state_dict({**plain.state_dict(), **refined.map_refiner.state_dict(prefix="map_refiner.")})
    with torch.no_grad():
        refined.map_refiner.out.bias.copy_(torch.tensor([50.0, -50.0, -50.0]))  # all foreground, all seeds
    refined.save_pretrained(tmp_path / "m")
    loaded = SamNucleusModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.map_refiner.out.bias, refined.map_refiner.out.bias)
    rgb, _ = synthetic_nuclei((96, 112), n=6, radius=8, seed=2)
    fine = loaded.initialized_segmenter(rgb, 0.25).maps
    assert fine.shape == (3, 96, 112) and (fine[0] > 0.99).all() and (fine[1:] < 0.01).all()
    same = loaded.initialized_segmenter(rgb, 0.5).maps  # the model's own pixel size: nothing to sharpen
    np.testing.assert_array_equal(same, plain.initialized_segmenter(rgb, 0.5).maps)


def test_views_are_the_eight_flips_and_turns():
    a = np.arange(12).reshape(1, 3, 4)
    views = [_turn(a, v) for v in range(8)]
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == 8
    np.testing.assert_array_equal(views[0], a)


def test_map_refiner_training_touches_only_the_refiner_and_resumes(data, tmp_path):  # noqa: F811
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    base = SamNucleusModel(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    out = tmp_path / "maps"
    run = MapRefinerConfig(
        data=[str(data)],
        out=str(out),
        init=str(tmp_path / "base"),
        mpp_in=0.25,
        crop=64,
        batch=2,
        iterations=2,
        val_every=2,
        checkpoint_every=1,
        val_fraction=0.25,
        width=8,
    )
    best = train_map_refiner(run, log=lambda *a: None)
    assert {"msa", "aji", "pq", "score", "iteration", "params"} <= set(best)
    run.iterations = 3
    train_map_refiner(run, log=lambda *a: None)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in history] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in history)
    trained = SamNucleusModel.from_pretrained(out / "best")
    assert trained.map_refiner is not None
    assert {k: trained.config["ais_params"][k] for k in best["params"]} == best["params"]  # its tuned watershed
    for k, v in base.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k
    run.mpp_in = 0.5
    with pytest.raises(PathsegError, match="finer than the model"):
        train_map_refiner(run, log=lambda *a: None)
