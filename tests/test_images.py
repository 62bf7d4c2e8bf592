"""Image reading and the cheap dataset-scan checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from echocxr.data.images import check_image, load_image
from echocxr.errors import UserError


@pytest.fixture
def files(tmp_path):
    good_png = tmp_path / "good.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(good_png)
    good_jpg = tmp_path / "good.jpg"
    Image.new("L", (8, 8), 90).save(good_jpg)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x00not an image" * 20)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    return {"png": good_png, "jpg": good_jpg, "garbage": garbage, "truncated": truncated,
            "missing": tmp_path / "missing.png"}


def test_check_modes(files):
    for mode in ("exists", "open", "decode"):
        assert check_image(files["png"], mode) is None
        assert check_image(files["jpg"], mode) is None
        assert check_image(files["missing"], mode) == "not found"
        assert (check_image(files["garbage"], mode) is None) == (mode == "exists")
    assert check_image(files["missing"], "none") is None  # "none" trusts the listing
    assert check_image(files["truncated"], "open") is not None  # PNG verify catches a cut-off file
    assert check_image(files["truncated"], "decode") is not None


def test_check_unknown_mode(files):
    with pytest.raises(UserError):
        check_image(files["png"], "thorough")


def test_load_image_gives_rgb_and_one_line_errors(files):
    img = load_image(files["png"])
    assert img.mode == "RGB" and img.size == (8, 8)
    for bad in ("garbage", "missing"):
        with pytest.raises(UserError) as exc:
            load_image(files[bad])
        assert "\n" not in str(exc.value)


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 1000], [3000, 4000]], dtype=np.uint16)).save(path)
    a = np.asarray(load_image(path))
    assert a.dtype == np.uint8 and a[0, 0, 0] == 0 and a[1, 1, 0] == 255
