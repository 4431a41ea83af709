"""The model zoo against a loopback HTTP server serving a small generated checkpoint."""

import functools
import http.server
import socket
import threading

import numpy as np
import pytest
import torch

from pathseg.download import file_hash
from pathseg.errors import PathsegError
from pathseg.models import zoo
from pathseg.models.nucleus_sam import SamNucleusModel
from tests.test_sam_checkpoints import tiny_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PATHSEG_OFFLINE", raising=False)
    yield tmp_path / "cache"
    zoo.unregister("tiny_test")


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    model = tiny_model()
    torch.save({"model_state": model.sam.state_dict(), "decoder_state": model.ais.state_dict()}, folder / "tiny.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder / "tiny.pt", model
    httpd.shutdown()
    httpd.server_close()


def _entry(url: str, known_hash: str) -> zoo.ModelEntry:
    def build(paths):
        from pathseg.models.nucleus_sam import from_checkpoint

        return from_checkpoint(paths[0], name="tiny_test")

    return zoo.ModelEntry("tiny_test", "nuclei", "test", 0.25, build, (zoo.RemoteFile("tiny.pt", url, known_hash),))


def test_good_hash_downloads_once_then_works_offline(cache, served, monkeypatch):
    url, path, ref = served
    zoo.register(_entry(f"{url}/tiny.pt", "xxh128:" + file_hash(path, "xxh128")))
    assert not zoo.get_entry("tiny_test").offline()
    model = zoo.get_nucleus_model("tiny_test")
    assert isinstance(model, SamNucleusModel)
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, ref.sam.mask_decoder.iou_token.weight)
    assert (cache / "models" / "tiny.pt").is_file() and zoo.get_entry("tiny_test").offline()
    monkeypatch.setenv("PATHSEG_OFFLINE", "1")  # no network needed any more
    assert zoo.get_nucleus_model("tiny_test") is not None


def test_bad_hash_is_refused_and_nothing_is_kept(cache, served):
    url, _, _ = served
    zoo.register(_entry(f"{url}/tiny.pt", "sha256:" + "0" * 64))
    with pytest.raises(PathsegError) as info:
        zoo.get_nucleus_model("tiny_test")
    msg = str(info.value)
    assert "sha256 mismatch" in msg and "put it at" in msg
    assert not (cache / "models" / "tiny.pt").exists()


def test_server_down_says_what_to_download_and_where(cache, served):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.pt"
    zoo.register(_entry(url, "xxh128:" + "1" * 32))
    with pytest.raises(PathsegError) as info:
        zoo.get_nucleus_model("tiny_test")
    msg = str(info.value)
    assert url in msg and str(cache / "models" / "tiny.pt") in msg and "--model PATH" in msg


def test_file_placed_by_hand_is_verified(cache, served):
    url, path, _ = served
    zoo.register(_entry("http://127.0.0.1:9/never", "xxh128:" + file_hash(path, "xxh128")))
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "tiny.pt").write_bytes(path.read_bytes())
    assert zoo.get_nucleus_model("tiny_test") is not None
    (cache / "models" / "tiny.pt").write_bytes(b"tampered")
    with pytest.raises(PathsegError, match="does not match the published hash"):
        zoo.get_nucleus_model("tiny_test")


def test_models_fetch_fills_the_cache_for_offline_runs(cache, served, monkeypatch, capsys):
    from pathseg.cli import main

    url, path, _ = served
    zoo.register(_entry(f"{url}/tiny.pt", "xxh128:" + file_hash(path, "xxh128")))
    assert main(["models", "fetch", "tiny_test", "classical", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"tiny_test: {cache / 'models' / 'tiny.pt'} (xxh128 verified)" in out and "classical: built-in" in out
    monkeypatch.setenv("PATHSEG_OFFLINE", "1")  # cached: nothing to download any more
    assert zoo.get_entry("tiny_test").offline() and main(["models", "fetch", "tiny_test", "-q"]) == 0
    zoo.register(_entry(f"{url}/tiny.pt", "sha256:" + "0" * 64))  # a file that fails its hash: exit 1, said why
    monkeypatch.delenv("PATHSEG_OFFLINE")
    assert main(["models", "fetch", "tiny_test", "-q"]) == 1
    assert "does not match the published hash" in capsys.readouterr().err
    assert main(["models", "fetch", "no_such_model"]) == 2  # names checked before any download


def test_local_path_override(served):
    _, path, ref = served
    model = zoo.get_nucleus_model(str(path))
    rgb = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    assert np.allclose(model.predict_maps(rgb), ref.predict_maps(rgb), atol=1e-6)


def test_published_entries_are_listed():
    names = {e.name for e in zoo.list_models()}
    assert {
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "pathosam_vit_b",
        "pathosam_vit_l",
        "pathosam_vit_h",
        "pathosam_vit_b_semantic",
        "classical",
    } <= names
    for e in zoo.list_models():
        for f in e.files:
            assert f.url.startswith("https://") and f.known_hash.split(":")[0] in ("xxh128", "sha256")


def test_bundled_models_are_registered_and_preferred(tmp_path, monkeypatch):
    from pathseg.models.nucleus_sam import compact_config

    cfg = compact_config(name="pathseg_nuclei_cpu", tile=128)
    SamNucleusModel(cfg).save_pretrained(tmp_path / "pathseg_nuclei_cpu")
    try:
        assert zoo.register_bundled(tmp_path) == ["pathseg_nuclei_cpu"]
        entry = zoo.get_entry("pathseg_nuclei_cpu")
        assert entry.offline() and entry.source == "bundled"
        assert zoo.default_nucleus_model() == "pathseg_nuclei_cpu"
        assert isinstance(zoo.get_nucleus_model(), SamNucleusModel)
    finally:
        zoo.unregister("pathseg_nuclei_cpu")
    try:
        assert zoo.default_nucleus_model() == "classical"  # no bundled nucleus model: the classical one
    finally:
        zoo.register_bundled()  # the package's own bundled models again, for the tests that follow


def test_update_config_sets_entries_and_keeps_the_rest(tmp_path):
    import json

    import torch

    from pathseg.errors import PathsegError
    from pathseg.models.folder import read_config, save_folder, update_config

    save_folder(tmp_path / "m", {"name": "m", "ais_params": {"min_size": 10}}, {"w": torch.zeros(2)})
    path = update_config(tmp_path / "m", {"ais_params": {"min_size": 20}, "ais_mpp": 0.42})
    assert path == tmp_path / "m" / "config.json"
    assert read_config(tmp_path / "m") == {"name": "m", "ais_params": {"min_size": 20}, "ais_mpp": 0.42}
    assert json.loads(path.read_text())["ais_mpp"] == 0.42
    with pytest.raises(PathsegError, match="no config.json"):
        update_config(tmp_path / "absent", {"x": 1})


def test_replace_weights_swap_tensors_of_the_main_file_shape_for_shape(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pathseg.errors import PathsegError
    from pathseg.models.folder import read_folder, save_folder, update_config

    save_folder(tmp_path / "m", {"name": "m"}, {"enc.w": torch.zeros(2), "ais.w": torch.zeros(3)})
    save_file({"ais.w": torch.ones(3)}, str(tmp_path / "m" / "ais.safetensors"))
    update_config(tmp_path / "m", {"replace_weights": ["ais.safetensors"]})
    config, state = read_folder(tmp_path / "m")
    assert torch.equal(state["ais.w"], torch.ones(3)) and torch.equal(state["enc.w"], torch.zeros(2))
    save_folder(tmp_path / "one", config, state)  # saved again: one file, nothing to replace
    assert "replace_weights" not in read_folder(tmp_path / "one")[0]
    save_file({"ais.w": torch.ones(4)}, str(tmp_path / "m" / "ais.safetensors"))
    with pytest.raises(PathsegError, match="replaces 'ais.w'"):
        read_folder(tmp_path / "m")
    save_file({"new.w": torch.ones(3)}, str(tmp_path / "m" / "ais.safetensors"))
    with pytest.raises(PathsegError, match="replaces 'new.w'"):
        read_folder(tmp_path / "m")


def test_int8_rows_read_back_within_half_a_step(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pathseg.errors import PathsegError
    from pathseg.models.folder import INT8_SCALE, WEIGHTS_NAME, quantize_rows, read_folder, save_folder

    w = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(0))
    w[2] = 0  # an all-zero row
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (6,) and q.abs().max() == 127
    save_folder(tmp_path / "m", {"name": "m"}, {"a.w": q, "a.w" + INT8_SCALE: scale, "b.w": torch.ones(2)})
    _, state = read_folder(tmp_path / "m")
    assert set(state) == {"a.w", "b.w"} and state["a.w"].dtype == torch.float32
    step = w.abs().amax(dim=(1, 2)) / 127
    assert ((state["a.w"] - w).abs() <= step[:, None, None] / 2 + 1e-7).all()
    assert torch.equal(state["a.w"][2], torch.zeros(5, 3))
    save_file({"a.w": w, "a.w" + INT8_SCALE: scale}, str(tmp_path / "m" / WEIGHTS_NAME))  # a scale of no int8
    with pytest.raises(PathsegError, match="per-row scale"):
        read_folder(tmp_path / "m")


@pytest.mark.parametrize(("name", "limit"), [("pathseg_nuclei_cpu", 20 * 10**6), ("pathseg_tissue", 30 * 2**20)])
def test_bundled_models_stay_within_their_size_limits(name, limit):
    """Every file a bundled model ships counts (add-ons and replacements too): nuclei <= 20 MB in powers of ten (so
    also in MiB), tissue <= 30 MiB."""
    from pathlib import Path

    import pathseg

    folder = Path(pathseg.__file__).parent / "weights" / name
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert 0 < size <= limit, f"{name}: {size} bytes, over {limit}"


def test_a_model_of_another_task_is_named_as_such_not_a_key_error(tmp_path):
    import json

    nuclei, tissue, broken = tmp_path / "n", tmp_path / "t", tmp_path / "b"
    for folder, config in ((nuclei, {"task": "nuclei", "encoder": {}}), (tissue, {"backbone": {}, "head": {}})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PathsegError, match=r"segments tissue, not nuclei; `pathseg models list`"):
        zoo.get_nucleus_model(tissue)  # no "task" key: told by its parts
    with pytest.raises(PathsegError, match="segments nuclei, not tissue"):
        zoo.get_tissue_model(nuclei)
    with pytest.raises(PathsegError, match=r"part that other models build on \(encoder\), not a nuclei model"):
        zoo.get_nucleus_model("hipt_vit256_small")
    broken.mkdir()
    (broken / "config.json").write_text("{oops")
    with pytest.raises(PathsegError, match="config.json: not valid JSON"):
        zoo.get_nucleus_model(broken)
