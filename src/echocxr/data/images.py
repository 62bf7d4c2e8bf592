"""Reading chest X-ray images from disk into RGB PIL images, with one-line errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from echocxr.errors import UserError

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_CHECKS = ("none", "exists", "open", "decode")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Load PNG/JPEG/... (any PIL format) or DICOM as an 8-bit RGB image."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not an image file")
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    if path.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(path):
        from echocxr.data.dicom import load_dicom  # lazy: pydicom only when needed

        return load_dicom(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


BAND_PIXELS = 1 << 20  # deep images are scaled to 8 bits a band of rows at a time (bounded temporaries)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode (16-bit grey, RGBA, CMYK, palette) to 8-bit RGB.

    Deep grey (16-bit, int32, float) is stretched from its min..max onto 0..255 band by band, never as one
    float64 copy of the whole image: a 7000x7000 16-bit PNG costs its 8-bit result, not 0.8 GB of floats.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = Image.fromarray(_stretch_to_uint8(im), mode="L")
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def _stretch_to_uint8(im: Image.Image):
    """(v - lo) / (hi - lo) * 255 truncated to uint8 (0 for a flat image), computed in float64 per band;
    16-bit images through a 65,536-entry table of exactly those values."""
    import numpy as np

    lo, hi = (float(x) for x in im.getextrema())
    w, h = im.size
    out = np.zeros((h, w), dtype=np.uint8)
    if not hi > lo:
        return out
    lut = None
    if im.mode.startswith("I;16"):
        lut = ((np.arange(65536, dtype=np.float64) - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)
    rows = max(1, BAND_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        band = np.asarray(im.crop((0, y, w, min(h, y + rows))))
        if lut is not None:
            out[y:y + rows] = lut[band]
        else:
            out[y:y + rows] = ((band.astype(np.float64) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return out


def check_image(path: str | os.PathLike, mode: str = "open") -> str | None:
    """Why `path` is unusable as an image, or None if it passes; never raises for a bad file.

    Modes trade speed for certainty when scanning datasets of 100k+ files: "none" trusts the
    listing, "exists" stats the file, "open" parses the header (PIL ``verify``; DICOM header without
    pixels), "decode" fully loads it via `load_image`.
    """
    if mode not in IMAGE_CHECKS:
        raise UserError(f"unknown image check {mode!r}; choose one of {', '.join(IMAGE_CHECKS)}")
    if mode == "none":
        return None
    path = Path(path)
    if not path.is_file():
        return "not found"
    if mode == "exists":
        return None
    if mode == "decode":
        try:
            load_image(path)
        except UserError as exc:
            return str(exc)
        return None
    if path.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(path):
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.get("Rows")
        except Exception as exc:  # pydicom raises many types for damaged files
            return f"unreadable DICOM ({type(exc).__name__})"
        return None
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"unreadable image ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"
    return None


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False
