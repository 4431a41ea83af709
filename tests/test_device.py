"""Devices: naming them, moving models, and every inference path keeping its tensors on the model's device.

This machine has no GPU, so the paths run on PyTorch's ``meta`` device, which computes shapes only and refuses to
mix its tensors with CPU ones (``Tensor on device cpu is not on the expected device meta``): an input left on the
CPU, or a result read without ``.cpu()``, fails here as it would on a GPU. Results copied to the CPU come back as
zeros (``_meta_reads_as_zeros``), so the numpy steps after the network run too.
"""

import numpy as np
import pytest
import torch

from pathseg.errors import PathsegError
from pathseg.models import device as devices
from pathseg.models.device import module_device, place, resolve_device
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from tests.conftest import synthetic_nuclei

META = torch.device("meta")


@pytest.fixture
def _meta_reads_as_zeros(monkeypatch):
    cpu = torch.Tensor.cpu

    def reads_as_zeros(self, *args, **kwargs):
        if self.device.type == "meta":
            return torch.zeros(self.shape, dtype=self.dtype)
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", reads_as_zeros)


def _compact(classes: bool = False) -> SamNucleusModel:
    torch.manual_seed(0)
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    if classes:
        cfg["semantic_decoder"] = {**cfg["ais_decoder"], "out_channels": 3}
    return SamNucleusModel(cfg).eval()


def test_devices_are_named_and_checked():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(PathsegError, match="unknown device 'gpu0'; one of auto, cpu, cuda, cuda:N"):
        resolve_device("gpu0")
    with pytest.raises(PathsegError, match="unknown device 'mps'"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(PathsegError, match="no CUDA GPU here .* use --device cpu"):
            resolve_device("cuda:1")


def test_place_moves_torch_models_and_leaves_the_classical_one(monkeypatch):
    from pathseg.models.classical import ClassicalModel

    classical = ClassicalModel()
    assert place(classical, "cpu") is classical
    model = _compact()
    assert place(model, "cpu") is model and module_device(model) == torch.device("cpu")
    model.config["ais_precision"] = model.config["class_precision"] = "int8"  # as the bundled model: CPUs only
    monkeypatch.setattr(devices, "resolve_device", lambda spec: META)  # stands in for a GPU
    with pytest.raises(PathsegError, match="--ais-precision int8 runs on CPUs"):
        place(model, "cuda", ais_precision="int8")  # asked for explicitly: refused
    assert place(model, "cuda") is model and model.device == META
    assert model.ais_precision == "float32"  # what runs there, and what a slide run records
    assert model.config["class_precision"] == "float32"


@pytest.mark.usefixtures("_meta_reads_as_zeros")
def test_the_automatic_path_and_classes_run_where_the_model_is():
    rgb, _ = synthetic_nuclei((160, 200), n=8, radius=10, seed=0)
    model = _compact(classes=True).to(META)
    maps = model.predict_maps(rgb)  # folded copies of the meta weights; int8 is CPU-only, so float32
    assert maps.shape == (3, 160, 200) and not maps.any()
    labels = model.segment(rgb, 0.5)  # tiles (128 + halo) stitched, watershed on the zero maps
    assert labels.shape == (160, 200) and labels.max() == 0
    probs = model.class_probabilities(rgb, 0.5)
    assert probs.shape == (3, 160, 200)


@pytest.mark.usefixtures("_meta_reads_as_zeros")
def test_a_vit_sam_runs_where_it_is():
    from tests.test_sam_checkpoints import tiny_model

    rgb, _ = synthetic_nuclei((100, 120), n=4, radius=10, seed=1)
    model = tiny_model().to(META)
    assert model.predict_maps(rgb).shape == (3, 100, 120)
    assert model.segment(rgb, 0.25).shape == (100, 120)


@pytest.mark.usefixtures("_meta_reads_as_zeros")
def test_prompts_run_where_the_model_is(tmp_path):
    from pathseg.models.zoo import get_nucleus_model
    from pathseg.nuclei.interactive import Predictor
    from pathseg.nuclei.prompted import AutomaticMaskGenerator

    rgb, _ = synthetic_nuclei((160, 160), n=6, radius=10, seed=2)
    # the bundled model: refiners that read the AIS decoder's features and the prompts, box answers that may
    # take the automatic segmentation's nucleus
    model = get_nucleus_model("pathseg_nuclei_cpu").to(META)
    predictor = Predictor(model)
    predictor.set_image(rgb, 0.5, cache=tmp_path / "emb.safetensors")  # written from the CPU
    assert predictor.embeddings[0].device == META
    point = predictor.predict(points=np.array([[80.0, 80.0]]), labels=np.array([1]))
    assert point.iou.shape == (3,)
    box = predictor.predict(box=np.array([60.0, 60.0, 100.0, 100.0]), multimask=False)
    predictor.predict(points=np.array([[70.0, 70.0]]), labels=np.array([0]), mask_input=box.mask_prompt(0))
    again = Predictor(model)
    again.set_image(rgb, 0.5, cache=tmp_path / "emb.safetensors")  # read back, then moved to the model
    assert again.embeddings[0].device == META
    amg = AutomaticMaskGenerator(Predictor(model), points_per_side=4)
    amg.initialize(rgb, 0.5)
    assert amg.generate().shape == (160, 160)


@pytest.mark.usefixtures("_meta_reads_as_zeros")
def test_the_tissue_model_runs_where_it_is():
    from tests.test_wsi_tissue import tiny_tissue_model

    model = tiny_tissue_model(0.5).to(META)
    rgb, _ = synthetic_nuclei((70, 90), n=3, radius=8, seed=3)
    probs = model.probabilities(rgb)
    assert probs.shape == (len(model.class_names), 70, 90)


def test_the_commands_take_a_device(tmp_path, capsys):
    from PIL import Image

    from pathseg.cli import main

    rgb, _ = synthetic_nuclei((96, 96), n=4, radius=8, seed=4)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "out"), "-q", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "t_instances.tif").is_file()
    for command in (["nuclei", str(tmp_path / "t.png")], ["tissue", str(tmp_path / "t.png")]):
        code = main([*command, "-o", str(tmp_path / "x"), "-q", "--device", "tpu"])
        assert code != 0 and "unknown device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        code = main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "x"), "-q", "--device", "cuda"])
        assert code != 0 and "no CUDA GPU here" in capsys.readouterr().err


def test_a_slide_run_names_a_missing_device_before_writing_anything(tmp_path, capsys):
    from pathseg.cli import main
    from tests.conftest import shared_data

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    for task in ("nuclei", "tissue"):
        out = tmp_path / task
        code = main(["wsi", str(svs), "-o", str(out), "-q", "--task", task, "--device", "cuda:x"])
        assert code != 0 and "unknown device 'cuda:x'" in capsys.readouterr().err and not out.exists()
