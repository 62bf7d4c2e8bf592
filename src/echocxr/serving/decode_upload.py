"""Uploaded bytes -> RGB PIL images, entirely in memory, with the limits an internet-facing decoder needs.

Nothing is written to disk. The pixel count is checked from the header before any pixels are decoded, so
a decompression bomb costs a few bytes of parsing; DICOM goes through the same display pipeline as files
on disk (`echocxr.data.dicom.dicom_to_uint8`: modality LUT, VOI/windowing, MONOCHROME1 inversion).
"""

from __future__ import annotations

import base64
import binascii
import re
from io import BytesIO

from PIL import Image, UnidentifiedImageError

from echocxr.data.images import to_rgb
from echocxr.errors import UserError

PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")  # a short list: fewer decoders exposed to uploads
DEFAULT_MAX_PIXELS = 50_000_000  # per image, before the model's own 2.25 MP resize
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000  # all views of one request together
MIN_SIDE = 28  # one vision patch; smaller is not a radiograph
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


class ImageTooLarge(UserError):
    """An image (or upload) over a size limit: the HTTP layer answers 413, not 400."""


def load_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one uploaded view (PNG, JPEG, WEBP, BMP, TIFF or DICOM) to 8-bit RGB."""
    if not data:
        raise UserError("empty image upload")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return _load_dicom_bytes(data, max_pixels)
    try:
        im = Image.open(BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {_one_line(exc)}") from None
    except UnidentifiedImageError:
        if data[:2] in (b"\x02\x00", b"\x08\x00"):  # starts like a DICOM tag: a file without the preamble
            return _load_dicom_bytes(data, max_pixels, sniffed=False)
        raise UserError(f"not an image: expected PNG, JPEG or DICOM ({len(data)} bytes of unknown data)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image: {_one_line(exc)}") from None
    with im:
        _check_size(im.width, im.height, max_pixels)
        try:
            im.load()
            return to_rgb(im)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"image too large: {_one_line(exc)}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UserError(f"cannot decode {im.format} image: {_one_line(exc)}") from None


def header_pixels(data: bytes) -> int:
    """Pixels a view will decode to (width x height x frames), read from its header only; 0 when the header
    cannot be read (`load_image_bytes` then says why). Lets a request's pixel budget refuse before decoding."""
    try:
        if len(data) >= 132 and data[128:132] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00"):
            import pydicom

            ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
            return (int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
                    * max(1, int(ds.get("NumberOfFrames", 1) or 1)))
        with Image.open(BytesIO(data), formats=PIL_FORMATS) as im:
            return im.width * im.height
    except Exception:  # noqa: BLE001 - any unreadable header: the decode reports it in its own words
        return 0


def decode_base64_image(value: str) -> bytes:
    """Bytes of a base64 string or a `data:` URI; remote URLs are refused (the server fetches nothing)."""
    if not isinstance(value, str) or not value:
        raise UserError("each image must be a non-empty base64 string or data: URI")
    head = value[:256]
    if head.startswith(("http://", "https://", "file:", "ftp:")):
        raise UserError("image URLs are not fetched: send the image as a base64 data: URI")
    if head[:5].lower() == "data:":
        m = _DATA_URI.match(head)
        if m is None or not m.group("b64"):
            raise UserError("malformed data: URI (expected data:<mime>;base64,<data>)")
        value = value[m.end():]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("image is not valid base64") from None


def _load_dicom_bytes(data: bytes, max_pixels: int, sniffed: bool = True) -> Image.Image:
    """sniffed: the DICM magic was seen; otherwise the preamble-less read is forced and must yield pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from echocxr.data.dicom import dicom_to_uint8

    try:
        ds = pydicom.dcmread(BytesIO(data), force=not sniffed)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, OverflowError) as exc:
        if not sniffed:
            raise UserError(f"not an image: expected PNG, JPEG or DICOM ({len(data)} bytes of unknown data)") from None
        raise UserError(f"cannot read DICOM: {_one_line(exc)}") from None
    if "PixelData" not in ds:
        if not sniffed:
            raise UserError(f"not an image: expected PNG, JPEG or DICOM ({len(data)} bytes of unknown data)")
        raise UserError("DICOM has no pixel data (not an image object)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(cols, rows, max_pixels, frames=int(ds.get("NumberOfFrames", 1) or 1))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types: missing decoder, truncated data, bad tags
        raise UserError(f"cannot decode DICOM pixels: {_one_line(exc)}") from None
    try:
        return Image.fromarray(dicom_to_uint8(arr, ds)).convert("RGB")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot convert DICOM pixels: {_one_line(exc)}") from None


def _check_size(width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise UserError(f"image too small: {width}x{height} pixels (need at least {MIN_SIDE}x{MIN_SIDE})")
    frames = max(frames, 1)
    if width * height * frames > max_pixels:
        if frames > 1:  # every frame is decoded before the first is used: they all count
            raise ImageTooLarge(f"image too large: {frames} frames of {width}x{height} pixels = "
                                f"{width * height * frames / 1e6:.1f} MP (limit {max_pixels / 1e6:.1f} MP; "
                                "send a single-frame DICOM of the view)")
        raise ImageTooLarge(f"image too large: {width}x{height} pixels = {width * height / 1e6:.1f} MP "
                            f"(limit {max_pixels / 1e6:.1f} MP)")


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."
