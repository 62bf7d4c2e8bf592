"""DICOM display pipeline on small real DICOM files written with pydicom."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from echocxr.data.dicom import load_dicom
from echocxr.data.images import load_image
from echocxr.errors import UserError
from tests.dicom_files import write_dicom


def grey(img) -> np.ndarray:
    a = np.asarray(img)
    assert img.mode == "RGB" and a.dtype == np.uint8
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0].astype(int)


def ramp16(n: int = 8, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, n * n).round().astype(np.uint16).reshape(n, n)


def test_16bit_monochrome2_uses_full_range(tmp_path):
    arr = ramp16()
    img = load_dicom(write_dicom(tmp_path / "a.dcm", arr, bits_stored=12))
    g = grey(img)
    assert img.size == (8, 8)
    assert g.min() == 0 and g.max() == 255
    assert (np.diff(g.ravel()) >= 0).all()  # a ramp stays a ramp


def test_monochrome1_is_inverted(tmp_path):
    arr = ramp16()
    m2 = grey(load_dicom(write_dicom(tmp_path / "m2.dcm", arr, bits_stored=12)))
    m1 = grey(load_dicom(write_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", bits_stored=12)))
    assert (m1 == 255 - m2).all()


def test_rescale_then_window(tmp_path):
    # stored s -> value 2*s - 1024; window centre 0, width 200 (in rescaled units).
    rescaled = np.array([-1024, -100, 0, 100, 1000, 50])
    stored = ((rescaled + 1024) // 2).astype(np.uint16).reshape(2, 3)
    path = write_dicom(
        tmp_path / "w.dcm", stored, bits_stored=12,
        RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=200,
    )
    g = grey(load_dicom(path)).ravel()
    assert g[0] == 0 and g[1] == 0  # at or below the window floor
    assert g[3] == 255 and g[4] == 255  # above the window ceiling
    assert abs(g[2] - 128) <= 1  # centre of the window is mid-grey
    assert 128 < g[5] < 255


def test_window_with_monochrome1(tmp_path):
    arr = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w1.dcm", arr, "MONOCHROME1", bits_stored=12, WindowCenter=1500, WindowWidth=1000)
    g = grey(load_dicom(path)).ravel()
    assert g[0] == 255 and g[-1] == 0  # low values are bright in MONOCHROME1


def test_sigmoid_voi_function(tmp_path):
    arr = np.array([[0, 500, 1000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "s.dcm", arr, bits_stored=12, WindowCenter=500, WindowWidth=400,
                       VOILUTFunction="SIGMOID")
    g = grey(load_dicom(path)).ravel()
    assert g[0] < 10 and abs(g[1] - 128) <= 1 and g[2] > 245


def test_voi_lut_sequence_is_preferred_over_window(tmp_path):
    lut = [round(255 * (k / 255) ** 2) for k in range(256)]  # a non-linear (gamma) VOI LUT
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", lut)  # LUT Data
    arr = np.array([[0, 64, 128, 200, 255, 4000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", arr, bits_stored=12, VOILUTSequence=[item],
                       WindowCenter=2000, WindowWidth=10)
    g = grey(load_dicom(path)).ravel()
    assert list(g[:5]) == [lut[0], lut[64], lut[128], lut[200], lut[255]]
    assert g[5] == 255  # beyond the table: last entry


def test_8bit_multiframe_and_rgb(tmp_path):
    frames = np.stack([np.full((4, 5), 10, np.uint8), np.full((4, 5), 200, np.uint8)])
    frames[0, 0, 0] = 250
    img = load_dicom(write_dicom(tmp_path / "mf.dcm", frames))
    assert img.size == (5, 4) and grey(img)[0, 0] == 255 and grey(img)[1, 1] == 0  # first frame only

    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 30
    out = np.asarray(load_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")))
    assert out.shape == (3, 4, 3) and (out[..., 0] == 200).all() and (out[..., 2] == 30).all()


def test_load_image_dispatches_on_suffix_and_on_header(tmp_path):
    arr = ramp16(4)
    write_dicom(tmp_path / "x.dcm", arr, bits_stored=12)
    write_dicom(tmp_path / "no_suffix", arr, bits_stored=12)
    assert (grey(load_image(tmp_path / "x.dcm")) == grey(load_image(tmp_path / "no_suffix"))).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_pixels"])
def test_damaged_files_give_one_line_user_error(tmp_path, damage):
    path = tmp_path / "bad.dcm"
    if damage == "garbage":
        path.write_bytes(b"this is not a dicom file" * 10)
    else:
        write_dicom(path, ramp16(32), bits_stored=12)
        if damage == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) - 1000])
        else:
            import pydicom

            ds = pydicom.dcmread(path)
            del ds.PixelData
            ds.save_as(path)
    with pytest.raises(UserError) as exc:
        load_image(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
