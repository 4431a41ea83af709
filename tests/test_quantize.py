"""The int8 automatic path: calibrated ranges give maps close to float32, travel with the model folder, and are never
used for weights they were not calibrated on."""

import json
import logging

import numpy as np
import pytest
import torch

from pathseg.models.quantize import QPARAMS_NAME, build_int8, calibrate, int8_unavailable

pytestmark = pytest.mark.skipif(int8_unavailable() is not None, reason=str(int8_unavailable()))


def _model():
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    from .test_fuse import _random_batchnorm_statistics

    torch.manual_seed(0)
    model = SamNucleusModel(compact_config(mpp=0.5, tile=256))
    _random_batchnorm_statistics(model)
    return model.eval()


def _images(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (96, 112, 3), dtype=np.uint8) for _ in range(n)]


def _int8_model():
    model = _model()
    model.set_int8(calibrate(model, [(rgb, 0.5) for rgb in _images()]), images=3)
    return model


def test_int8_maps_follow_the_float_maps_and_only_the_automatic_path_changes():
    model = _model()
    rgb = _images(1, seed=5)[0]
    plain = model.predict_maps(rgb)
    embedding = model.embed_window(rgb)
    calls = []
    pairs = ((x, 0.5) for x in _images())  # any iterable: images may be read one at a time
    model.set_int8(calibrate(model, pairs, total=3, progress=lambda *a: calls.append(a)), images=3)
    assert calls[-1][:2] == (3, 3)
    assert model.ais_precision == "int8" and model.int8_features() is not None
    assert model.config["ais_int8"]["images"] == 3 and len(model.config["ais_int8"]["weights_sha256"]) == 64
    quantized = model.predict_maps(rgb)
    assert quantized.shape == plain.shape and quantized.dtype == np.float32
    assert plain.std() > 0.01  # a real comparison: the maps vary over the image
    assert 0 < np.abs(quantized - plain).max() < 0.05  # int8 arithmetic, close to the float maps
    assert torch.equal(model.embed_window(rgb), embedding)  # prompts stay float32
    model.config["ais_precision"] = "float32"
    assert np.array_equal(model.predict_maps(rgb), plain)
    model.config["ais_precision"], model.fold_batchnorm = "int8", False  # int8 builds on the folded network only
    assert model.int8_features() is None


def test_ranges_travel_with_the_folder_and_are_dropped_when_the_weights_change(tmp_path, caplog):
    from pathseg.models.nucleus_sam import SamNucleusModel

    model = _int8_model()
    rgb = _images(1, seed=5)[0]
    expected = model.predict_maps(rgb)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / QPARAMS_NAME).is_file()
    loaded = SamNucleusModel.from_pretrained(tmp_path / "m")
    assert loaded.ais_precision == "int8"
    assert np.array_equal(loaded.predict_maps(rgb), expected)

    with torch.no_grad():  # a retrained decoder: its old ranges no longer belong to it
        loaded.ais.ups[0][0][0].weight.mul_(1.5)
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        assert loaded.int8_features() is None
    assert "calibrated for other weights" in caplog.text
    loaded.save_pretrained(tmp_path / "retrained")
    config = json.loads((tmp_path / "retrained" / "config.json").read_text())
    assert "ais_precision" not in config and "ais_int8" not in config
    assert not (tmp_path / "retrained" / QPARAMS_NAME).exists()
    loaded.save_pretrained(tmp_path / "m")  # saved over its old folder: the old ranges go with the old weights
    assert not (tmp_path / "m" / QPARAMS_NAME).exists()


def test_ranges_that_do_not_fit_the_network_are_refused():
    model = _int8_model()
    encoder, ais, _ = model.inference_nets()
    qparams = dict(model.int8_qparams)
    qparams.pop(sorted(qparams)[0])
    with pytest.raises(ValueError, match="do not fit"):
        build_int8(encoder, ais, qparams)


def test_models_int8_command_writes_a_new_folder_that_pathseg_nuclei_runs(tmp_path, capsys):
    import tifffile

    from pathseg.cli import main

    _model().save_pretrained(tmp_path / "m")
    images = tmp_path / "tiles"
    images.mkdir()
    for i, rgb in enumerate(_images()):
        tifffile.imwrite(images / f"t{i}.tif", rgb)
    assert (
        main(["models", "int8", str(tmp_path / "m"), str(images), "--mpp", "0.5", "-o", str(tmp_path / "q"), "-q"]) == 0
    )
    files = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert files == ["ais_int8.safetensors", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["ais_precision"] == "int8" and config["ais_int8"]["images"] == 3
    assert config["name"] == json.loads((tmp_path / "m" / "config.json").read_text())["name"] + "_int8"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # images without a pixel size are taken at the model's, and the user is told
    assert main(["models", "int8", str(tmp_path / "m"), str(images / "t0.tif"), "-o", str(tmp_path / "q2")]) == 0
    assert "1 image(s) carry no pixel size (t0.tif); assumed 0.5" in capsys.readouterr().err
    # an existing, non-empty output folder is never overwritten
    assert main(["models", "int8", str(tmp_path / "m"), str(images), "-o", str(tmp_path / "q"), "-q"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    out = tmp_path / "out"
    tile = str(images / "t0.tif")
    assert main(["nuclei", tile, "-o", str(out), "--model", str(tmp_path / "q"), "--mpp", "0.5", "-q"]) == 0
    assert (out / "t0_instances.tif").is_file()
    # a model that cannot run int8 is refused before anything loads (no download of a ViT SAM)
    assert main(["models", "int8", "pathosam_vit_b", str(images), "-o", str(tmp_path / "v"), "-q"]) == 2
    assert "compact nucleus model folder" in capsys.readouterr().err and not (tmp_path / "v").exists()
    # asking for int8 from a model without ranges says how to make them
    code = main(["nuclei", tile, "-o", str(out), "--model", str(tmp_path / "m"), "--ais-precision", "int8", "-q"])
    assert code == 2 and "pathseg models int8" in capsys.readouterr().err


def test_a_pickled_model_leaves_its_int8_network_behind_and_rebuilds_it():
    import pickle

    model = _int8_model()
    rgb = _images(1, seed=5)[0]
    expected = model.predict_maps(rgb)
    assert model._int8[2] is not None  # the int8 network is built and cached
    copy = pickle.loads(pickle.dumps(model))
    assert copy._int8 is None and copy._folded is None
    assert np.array_equal(copy.predict_maps(rgb), expected)


def test_training_keeps_the_ranges_only_while_the_network_they_fit_is_frozen(tmp_path):
    from pathseg.models.nucleus_sam import SamNucleusModel
    from pathseg.train.nuclei import train_nuclei

    from .test_train import nuclei_folder, small_config

    data = nuclei_folder(tmp_path / "data")
    model = _int8_model()
    model.save_pretrained(tmp_path / "init", dtype=torch.float16)  # as the bundled model is stored
    model = SamNucleusModel.from_pretrained(tmp_path / "init")  # fp16 values: calibrate what was stored
    model.set_int8(calibrate(model, [(rgb, 0.5) for rgb in _images()]), images=3)
    model.save_pretrained(tmp_path / "init", dtype=torch.float16)
    assert SamNucleusModel.from_pretrained(tmp_path / "init").int8_features() is not None
    init = str(tmp_path / "init")
    logs: list[str] = []
    train_nuclei(small_config(data, tmp_path / "ais", decoder_only=True, init=init, iterations=1), log=logs.append)
    assert any("int8 ranges are left out" in line for line in logs)
    trained = json.loads((tmp_path / "ais" / "best" / "config.json").read_text())
    assert "ais_int8" not in trained and "ais_precision" not in trained
    train_nuclei(small_config(data, tmp_path / "mask", decoder_only="mask", init=init, iterations=1), log=logs.append)
    kept = SamNucleusModel.from_pretrained(tmp_path / "mask" / "best")  # the prompt path trained: ranges still fit
    assert kept.ais_precision == "int8" and kept.int8_features() is not None


def test_a_slide_run_takes_the_precision_and_will_not_resume_in_another(tmp_path):
    import tifffile

    from pathseg.errors import PathsegError
    from pathseg.wsi.pipeline import SlideRun, run_slide

    model = _int8_model()
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.concatenate(_images(2), axis=1), tile=(64, 64), photometric="rgb")
    run = SlideRun(str(path), str(tmp_path / "o"), model=str(tmp_path / "m"), mpp=0.5, chunk=256, halo=32)
    run.use_tissue_mask = False
    run_slide(run, log=lambda *a: None)
    stored = json.loads((tmp_path / "o" / "parts" / "run.json").read_text())
    assert stored["model_parameters"]["ais_precision"] == "int8"
    run.ais_precision = "float32"
    with pytest.raises(PathsegError, match="ais_precision"):
        run_slide(run, log=lambda *a: None)
    run.out = str(tmp_path / "f")
    run_slide(run, log=lambda *a: None)  # a float32 run of the same int8 model, in its own folder
    assert "ais_precision" not in json.loads((tmp_path / "f" / "parts" / "run.json").read_text())["model_parameters"]
    run.model, run.out = model, str(tmp_path / "g")  # a model object: the run takes a copy set to float32
    run_slide(run, log=lambda *a: None)
    assert (
        model.ais_precision == "int8"
        and "ais_precision" not in json.loads((tmp_path / "g" / "parts" / "run.json").read_text())["model_parameters"]
    )
    run.task = "tissue"
    with pytest.raises(PathsegError, match="--ais-precision is for nucleus runs"):
        run_slide(run, log=lambda *a: None)


def test_a_network_rebuilt_from_stored_ranges_equals_the_calibrated_one():
    import copy

    from pathseg.models.quantize import Calibration, _converted

    model = _model()
    encoder, ais, _ = model.inference_nets()
    calibration = Calibration(encoder, ais)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        calibration(torch.randn(1, 3, 64, 80, generator=g))
    direct = _converted(copy.deepcopy(calibration.observed))  # histogram observers, converted as calibrated
    rebuilt = build_int8(encoder, ais, calibration.qparams())  # min/max observers, ranges loaded
    x = torch.randn(1, 3, 48, 64, generator=g)
    with torch.no_grad():
        assert torch.equal(direct(x), rebuilt(x))
