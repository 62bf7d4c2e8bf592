"""Uploaded bytes -> images, in memory: every odd input a radiology upload endpoint meets."""

from __future__ import annotations

import base64
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from echocxr.errors import UserError
from echocxr.serving.decode_upload import ImageTooLarge, decode_base64_image, load_image_bytes
from tests.dicom_files import write_dicom


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def ramp(h: int = 64, w: int = 48) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


def dicom_bytes(arr: np.ndarray, photometric: str = "MONOCHROME2", preamble: bool = True, **attrs) -> bytes:
    buf = BytesIO()
    write_dicom(buf, arr, photometric, preamble=preamble, **attrs)
    return buf.getvalue()


def png_bomb(side: int) -> bytes:
    """A valid PNG header claiming side x side 1-bit pixels, with a tiny (but wrong) data stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def as_grey(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    assert im.mode == "RGB" and a.dtype == np.uint8
    return a[..., 0].astype(int)


def test_png_and_jpeg_roundtrip():
    arr = ramp()
    assert (as_grey(load_image_bytes(encode(Image.fromarray(arr)))) == arr).all()
    jpg = load_image_bytes(encode(Image.fromarray(arr), "JPEG", quality=95))
    assert jpg.size == (48, 64) and np.abs(as_grey(jpg) - arr).max() < 12


def test_16bit_png_is_scaled_to_full_range():
    arr16 = (ramp().astype(np.uint16) * 16)  # 12-bit data in a 16-bit PNG
    im = Image.fromarray(arr16)
    assert im.mode == "I;16"
    out = as_grey(load_image_bytes(encode(im)))
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out.ravel()) >= 0).all()  # monotone: no wrap-around


def test_rgba_and_cmyk_become_rgb():
    rgba = Image.new("RGBA", (40, 40), (200, 100, 50, 255))
    assert load_image_bytes(encode(rgba)).getpixel((5, 5)) == (200, 100, 50)
    cmyk = Image.new("CMYK", (40, 40), (0, 0, 0, 0))  # no ink: white
    out = load_image_bytes(encode(cmyk, "JPEG"))
    assert out.mode == "RGB" and min(out.getpixel((5, 5))) > 240


def test_non_image_bytes_rejected_with_clear_message():
    with pytest.raises(UserError, match="not an image"):
        load_image_bytes(b"%PDF-1.7 this is not a radiograph" * 10)
    with pytest.raises(UserError, match="empty"):
        load_image_bytes(b"")


def test_truncated_jpeg_rejected():
    data = encode(Image.fromarray(ramp(256, 256)), "JPEG")
    with pytest.raises(UserError, match="cannot (decode|read)"):
        load_image_bytes(data[: len(data) // 2])


def test_tiny_image_rejected():
    with pytest.raises(UserError, match="too small: 1x1"):
        load_image_bytes(encode(Image.new("L", (1, 1))))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="too large: 10000x10000 pixels = 100.0 MP"):
        load_image_bytes(png_bomb(10000))  # 100 MP: past our 50 MP limit, under PIL's hard one
    with pytest.raises(ImageTooLarge, match="too large.*decompression bomb"):
        load_image_bytes(png_bomb(30000))  # 900 MP: PIL itself refuses it at open
    with pytest.raises(ImageTooLarge, match=r"limit 0\.0 MP|too large"):
        load_image_bytes(encode(Image.fromarray(ramp())), max_pixels=1000)


def test_dicom_monochrome1_is_inverted():
    arr = (ramp().astype(np.uint16) * 16)
    mono2 = as_grey(load_image_bytes(dicom_bytes(arr, "MONOCHROME2")))
    mono1 = as_grey(load_image_bytes(dicom_bytes(arr, "MONOCHROME1")))
    assert (mono1 == 255 - mono2).all()
    assert mono2[0, 0] == 0 and mono2[-1, -1] == 255


def test_dicom_windowing_and_no_preamble():
    arr = (ramp().astype(np.uint16) * 16)
    windowed = as_grey(load_image_bytes(dicom_bytes(arr, WindowCenter=2000, WindowWidth=400)))
    assert (windowed == 0).mean() > 0.3 and (windowed == 255).mean() > 0.3  # a narrow window saturates
    bare = load_image_bytes(dicom_bytes(arr, preamble=False))  # no 128-byte preamble / DICM magic
    assert bare.size == (48, 64)


def test_dicom_size_checked_from_header():
    with pytest.raises(ImageTooLarge):
        load_image_bytes(dicom_bytes(ramp()), max_pixels=100)


def test_base64_and_data_uris():
    png = encode(Image.fromarray(ramp()))
    b64 = base64.b64encode(png).decode()
    assert decode_base64_image(b64) == png
    assert decode_base64_image("data:image/png;base64," + b64) == png
    with pytest.raises(UserError, match="not fetched"):
        decode_base64_image("https://example.org/cxr.png")
    with pytest.raises(UserError, match="not valid base64"):
        decode_base64_image("@@not base64@@")
    with pytest.raises(UserError, match="malformed data"):
        decode_base64_image("data:image/png," + b64)
