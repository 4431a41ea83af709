"""Reading images: conversions to RGB uint8, pixel size from metadata, and clear errors on bad files."""

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseg.errors import InputImageError
from pathseg.io.images import check_resampled_size, image_files, read_image, read_instance_labels, read_labels


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_png_rgb_roundtrip(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert im.pixels.dtype == np.uint8 and np.array_equal(im.pixels, rgb)
    assert im.notes == [] and im.mpp is None


def test_grey_png_is_replicated_with_a_note(tmp_path, rgb, caplog):
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    with caplog.at_level(logging.INFO, logger="pathseg"):
        im = read_image(tmp_path / "g.png")
    assert im.pixels.shape == (20, 30, 3)
    assert np.array_equal(im.pixels[..., 2], rgb[..., 0])
    assert "greyscale converted to RGB" in caplog.text


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    im = read_image(tmp_path / "t.png")
    assert tuple(im.pixels[0, 0]) == (255, 0, 0)
    assert tuple(im.pixels[3, 0]) == (255, 255, 255)
    assert any("alpha" in n for n in im.notes)


def test_palette_png(tmp_path, rgb):
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    im = read_image(tmp_path / "p.png")
    assert im.pixels.shape == (20, 30, 3) and any("palette" in n for n in im.notes)


def test_16bit_tiff_scaled(tmp_path):
    arr = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", arr)
    im = read_image(tmp_path / "x.tif")
    assert im.pixels[..., 0].tolist() == [[0, 255], [100, 200]]
    assert any("16-bit" in n for n in im.notes)


def test_12bit_data_in_16bit_container(tmp_path):
    arr = np.array([[0, 4095]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")  # PIL writes I;16
    im = read_image(tmp_path / "x.png")
    assert im.pixels[0, :, 0].tolist() == [0, 255]


def test_channels_first_tiff_and_float(tmp_path):
    arr = np.random.default_rng(0).random((3, 8, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "cf.tif", arr, photometric="rgb", planarconfig="separate")
    im = read_image(tmp_path / "cf.tif")
    assert im.pixels.shape == (8, 9, 3)
    assert np.allclose(im.pixels[..., 1], np.rint(arr[1] * 255), atol=1)


def test_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").pixels.shape == (20, 30, 3)


def test_tiff_resolution_tags_give_mpp(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "r.tif", rgb, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "r.tif").mpp == pytest.approx(0.5)


def test_ome_tiff_physical_size(tmp_path, rgb):
    tifffile.imwrite(
        tmp_path / "o.ome.tif",
        rgb,
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm"},
    )
    im = read_image(tmp_path / "o.ome.tif")
    assert im.mpp == pytest.approx(0.25) and im.pixels.shape == (20, 30, 3)


def test_screen_dpi_is_not_a_pixel_size(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "s.png", dpi=(72, 72))
    assert read_image(tmp_path / "s.png").mpp is None


def test_png_dpi_at_microscope_scale(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "m.png", dpi=(25400 / 0.5, 25400 / 0.5))
    assert read_image(tmp_path / "m.png").mpp == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello, not an image"), "not a recognised image format"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputImageError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        read_image(tmp_path / "cut.png")


def test_truncated_tiff(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "full.tif", np.tile(rgb, (20, 20, 1)), compression="zlib")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputImageError) as info:
        read_image(tmp_path / "cut.tif")
    assert "cut.tif" in str(info.value)


def test_pixel_cap_refuses_before_decoding(tmp_path, rgb, monkeypatch):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with pytest.raises(InputImageError, match="over the cap"):
        read_image(tmp_path / "a.png", max_pixels=100)
    monkeypatch.setenv("PATHSEG_MAX_PIXELS", "100")
    with pytest.raises(InputImageError, match="over the cap"):
        read_image(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", rgb)
    with pytest.raises(InputImageError, match="over the cap"):
        read_image(tmp_path / "a.tif")


def test_multidimensional_tiff_refused(tmp_path):
    tifffile.imwrite(
        tmp_path / "z.tif",
        np.zeros((4, 5, 6), dtype=np.uint8),
        photometric="minisblack",
        metadata={"axes": "ZYX"},
    )
    with pytest.raises(InputImageError, match="multi-dimensional"):
        read_image(tmp_path / "z.tif")


def test_read_labels(tmp_path):
    lab = np.array([[0, 1], [2, 70000]], dtype=np.uint32)
    tifffile.imwrite(tmp_path / "l.tif", lab)
    assert np.array_equal(read_labels(tmp_path / "l.tif"), lab)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputImageError, match="2-D label image"):
        read_labels(tmp_path / "rgb.png")


def test_binary_masks_are_refused_where_instance_masks_belong(tmp_path):
    binary = np.zeros((30, 30), np.uint8)
    for y in (2, 12, 22):
        binary[y : y + 5, 3:8] = 255  # three separate blobs, one value
    Image.fromarray(binary).save(tmp_path / "binary.png")
    with pytest.raises(InputImageError, match=r"one label \(255\) covers 3 separate regions.*skimage.measure.label"):
        read_instance_labels(tmp_path / "binary.png")
    for ok in (binary // 255 * np.arange(1, 31, dtype=np.uint8)[:, None], np.where(binary[:10] > 0, 1, 0)):
        Image.fromarray(ok.astype(np.uint8)).save(tmp_path / "ok.png")  # ids per blob; or one nucleus alone
        assert np.array_equal(read_instance_labels(tmp_path / "ok.png"), ok)


def test_resampling_over_the_cap_is_refused_with_the_sizes(monkeypatch):
    check_resampled_size((1000, 1000, 3), 0.25, 0.38)  # shrunk: fine
    check_resampled_size((1000, 2000), 0.5, 0.38, max_pixels=3_500_000)  # 1316x2632 = 3.46 Mpx
    over = r"2000x1000 px image to 2632x1316 px = 3.5 Mpx, over the cap of 3.0 Mpx; raise"
    with pytest.raises(InputImageError, match=over):
        check_resampled_size((1000, 2000), 0.5, 0.38, max_pixels=3_000_000, name="a.png")
    monkeypatch.setenv("PATHSEG_MAX_PIXELS", "1e6")  # the default cap follows the environment
    with pytest.raises(InputImageError, match="over the cap of 1.0 Mpx"):
        check_resampled_size((1000, 1000), 0.5, 0.38)
    # a magnification given as a pixel size: enlarged 105x a side, so the message asks about the unit
    with pytest.raises(InputImageError, match="Is 40 µm/px right.*not the magnification; if it is right, raise"):
        check_resampled_size((300, 300, 3), 40, 0.38, name="tile.png")


def test_image_files_leave_hidden_files_out(tmp_path):
    from pathseg.train.data import find_pairs

    for sub in ("images", "instance_masks"):
        (tmp_path / sub).mkdir()
        for name in ("b.png", "a.PNG", "._a.PNG", ".hidden.png", "notes.txt"):  # ._a.PNG: macOS metadata
            (tmp_path / sub / name).write_bytes(b"")
    assert [p.name for p in image_files(tmp_path / "images", {".png"})] == ["a.PNG", "b.png"]
    assert [(i.name, m.name) for i, m in find_pairs(tmp_path)] == [("a.PNG", "a.PNG"), ("b.png", "b.png")]


def test_hovernet_mat_and_numpy_labels_are_read(tmp_path):
    from scipy.io import savemat

    inst = np.zeros((6, 7), np.int32)
    inst[1:3, 1:3], inst[4:6, 4:7] = 1, 2
    types = (inst > 0).astype(np.int32) * 3
    savemat(tmp_path / "c.mat", {"inst_map": inst.astype(np.float64), "type_map": types, "inst_type": [[3], [3]]})
    assert np.array_equal(read_labels(tmp_path / "c.mat"), inst)  # MATLAB's doubles back to integer ids
    assert np.array_equal(read_labels(tmp_path / "c.mat", key="type_map"), types)
    savemat(tmp_path / "one.mat", {"labels": inst})
    assert np.array_equal(read_instance_labels(tmp_path / "one.mat"), inst)
    savemat(tmp_path / "two.mat", {"a": inst, "b": types})
    with pytest.raises(InputImageError, match=r"holds no 'inst_map' \(arrays: a, b\)"):
        read_labels(tmp_path / "two.mat")
    np.save(tmp_path / "l.npy", inst.astype(np.uint16))
    assert np.array_equal(read_labels(tmp_path / "l.npy"), inst)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputImageError, match="cannot read label image"):  # never unpickled
        read_labels(tmp_path / "o.npy")
