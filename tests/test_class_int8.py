"""The int8 class path: calibrated ranges give class probabilities close to float32, travel with the model folder,
are dropped for other weights, and a run can choose float32."""

import logging

import numpy as np
import pytest
import torch

from pathseg.errors import PathsegError
from pathseg.models import class_int8
from pathseg.models.quantize import calibrate, int8_unavailable

from .test_fuse import _model  # a compact model with a class decoder and non-trivial BatchNorm statistics
from .test_quantize import _images

pytestmark = pytest.mark.skipif(int8_unavailable() is not None, reason=str(int8_unavailable()))


def test_int8_classes_follow_float32_and_only_the_class_path_changes():
    model = _model()
    rgb = _images(1, seed=5)[0]
    plain, maps = model.predict_class_maps(rgb), model.predict_maps(rgb)
    with pytest.raises(PathsegError, match="no class int8 ranges"):
        class_int8.set_class_precision(model, "int8")
    calls = []
    ranges = calibrate(model, ((x, 0.5) for x in _images()), 3, lambda *a: calls.append(a), classes=True)
    class_int8.set_class_int8(model, ranges, images=3)
    assert calls[-1][:2] == (3, 3) and model.config["class_precision"] == "int8"
    quantized = model.predict_class_maps(rgb)
    assert quantized.shape == plain.shape and plain.std() > 0.01  # a real comparison: probabilities vary
    assert 0 < np.abs(quantized - plain).max() < 0.05 and np.allclose(quantized.sum(0), 1, atol=1e-5)
    assert np.array_equal(model.predict_maps(rgb), maps)  # the automatic path stays float32
    class_int8.set_class_precision(model, "float32")
    assert np.array_equal(model.predict_class_maps(rgb), plain)


def test_class_ranges_travel_with_the_folder_and_are_dropped_for_other_weights(tmp_path, caplog):
    from pathseg.models.nucleus_sam import SamNucleusModel

    model = _model()
    class_int8.set_class_int8(model, calibrate(model, [(x, 0.5) for x in _images()], classes=True), images=3)
    rgb = _images(1, seed=7)[0]
    expected = model.predict_class_maps(rgb)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / class_int8.CLASS_QPARAMS_NAME).is_file()
    loaded = SamNucleusModel.from_pretrained(tmp_path / "m")
    assert loaded.config["class_precision"] == "int8"
    assert np.array_equal(loaded.predict_class_maps(rgb), expected)  # the same int8 network, rebuilt
    with torch.no_grad():
        loaded.semantic.ups[0][0][0].weight.mul_(1.5)  # e.g. a class decoder trained since
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        loaded.predict_class_maps(rgb)
    assert "classifies in float32, not int8: its ranges were calibrated for other weights" in caplog.text
    loaded.save_pretrained(tmp_path / "m2")  # ranges for other weights are not saved
    assert not (tmp_path / "m2" / class_int8.CLASS_QPARAMS_NAME).is_file()
    assert "class_int8" not in (tmp_path / "m2" / "config.json").read_text()


def test_the_bundled_model_classifies_in_int8_and_a_run_can_choose(tmp_path, capsys):
    from PIL import Image

    from pathseg.cli import main
    from pathseg.models.zoo import get_nucleus_model
    from tests.conftest import synthetic_nuclei

    model = get_nucleus_model("pathseg_nuclei_cpu")
    assert model.config["class_precision"] == "int8" and model.class_int8_qparams is not None
    rgb, _ = synthetic_nuclei((128, 128), n=6, radius=10, seed=0)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    args = ["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "o"), "-q", "--class-precision", "float32"]
    assert main(args) != 0 and "--class-precision goes with --classes" in capsys.readouterr().err
    assert main([*args, "--classes"]) == 0 and (tmp_path / "o" / "t_classes.tif").is_file()


def test_a_slide_run_records_the_class_precision(tmp_path):
    from pathseg.wsi.pipeline import SlideRun, run_slide
    from tests.conftest import shared_data

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    run = SlideRun(str(svs), str(tmp_path / "r"), model="pathseg_nuclei_cpu", roi=(600, 900, 300, 300), chunk=512)
    run.class_precision = "float32"
    with pytest.raises(PathsegError, match="--class-precision goes with --classes"):
        run_slide(run, log=lambda *a: None)
    run.classes = True
    run_slide(run, log=lambda *a: None)
    run.class_precision = None  # the bundled model's int8: the chunks written in float32 are not mixed with it
    with pytest.raises(PathsegError, match='model_parameters.class_precision: "float32" there, "int8" now'):
        run_slide(run, log=lambda *a: None)


def test_models_int8_calibrates_the_class_path_too(tmp_path):
    import json

    import tifffile

    from pathseg.cli import main
    from pathseg.models.nucleus_sam import SamNucleusModel

    _model().save_pretrained(tmp_path / "m")
    images = tmp_path / "tiles"
    images.mkdir()
    for i, rgb in enumerate(_images()):
        tifffile.imwrite(images / f"t{i}.tif", rgb)
    out = tmp_path / "q"
    assert main(["models", "int8", str(tmp_path / "m"), str(images), "--mpp", "0.5", "-o", str(out), "-q"]) == 0
    assert (out / "ais_int8.safetensors").is_file() and (out / class_int8.CLASS_QPARAMS_NAME).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["class_precision"] == "int8" and config["class_int8"]["images"] == 3
    model = SamNucleusModel.from_pretrained(out)
    encoder, _, semantic = model.inference_nets()
    assert class_int8.class_int8_network(model, encoder, semantic) is not None  # the ranges fit: int8 runs
