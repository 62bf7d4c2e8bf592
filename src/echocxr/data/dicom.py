"""DICOM chest radiographs -> 8-bit RGB PIL images, the way a radiologist's viewer would show them.

Order of operations follows DICOM PS3.3 C.11: stored values -> Modality LUT (rescale slope /
intercept) -> VOI LUT or window centre/width -> presentation (MONOCHROME1 is inverted so bone is
bright). Without VOI information the full data range is used. pydicom does the LUT maths; this module
only picks the steps and maps the result onto 0..255.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from echocxr.errors import UserError

_PROBE = 1e9  # far outside any pixel range: pushes values onto the ends of a VOI transform
_BAND_PIXELS = 1 << 20


def load_dicom(path: str | os.PathLike, frame: int = 0) -> Image.Image:
    """Read a DICOM file (first frame of multi-frame files) as an 8-bit RGB image."""
    import pydicom  # lazy: only users with DICOM pay the import
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"cannot read DICOM {path}: {_one_line(exc)}") from None
    if "PixelData" not in ds:
        raise UserError(f"DICOM {path} has no pixel data (not an image object)")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types: missing decoder, truncated data, bad tags
        hint = ""
        if "decompress" in str(exc).lower() or "plugin" in str(exc).lower():
            hint = " (compressed transfer syntax: install pylibjpeg/pylibjpeg-openjpeg or gdcm)"
        raise UserError(f"cannot decode pixels of DICOM {path}: {_one_line(exc)}{hint}") from None
    try:
        return Image.fromarray(dicom_to_uint8(arr, ds, frame=frame)).convert("RGB")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot convert DICOM {path}: {_one_line(exc)}") from None


def dicom_to_uint8(arr: np.ndarray, ds, frame: int = 0) -> np.ndarray:
    """Display pipeline on a decoded pixel array: (H, W) uint8 for grey, (H, W, 3) for colour."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        if not 0 <= frame < arr.shape[0]:
            raise UserError(f"frame {frame} out of range (file has {arr.shape[0]} frames)")
        arr = arr[frame]
    if samples > 1:  # colour (secondary capture, screenshots): pydicom already returns RGB
        if arr.dtype == np.uint8:
            return arr
        return _rescale_to_uint8(arr.astype(np.float64), 0.0, float(2 ** int(ds.get("BitsStored", 16)) - 1))

    from pydicom.pixels import apply_modality_lut

    # Band by band (every step is per pixel): a 7000x7000 frame never exists as whole float64 copies.
    bands = [slice(y, y + _band_rows(arr)) for y in range(0, arr.shape[0], _band_rows(arr))]
    lo, hi = np.inf, -np.inf
    for band in bands:
        values = apply_modality_lut(arr[band], ds)
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    out = np.empty(arr.shape[:2], dtype=np.uint8)

    def fill(voi: tuple[float, float] | None) -> None:
        for band in bands:
            values = apply_modality_lut(arr[band], ds).astype(np.float64)
            out[band] = (_rescale_to_uint8(values, lo, hi) if voi is None
                         else _rescale_to_uint8(_apply_voi(values, ds), *voi))

    try:
        fill(_voi_range(ds))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError):
        fill(None)  # malformed VOI attributes: the full data range
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _band_rows(arr: np.ndarray) -> int:
    return max(1, _BAND_PIXELS // max(1, int(np.prod(arr.shape[1:]))))


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range of the VOI LUT (preferred) or window centre/width, or None (none, or malformed)."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    try:
        if ds.get("VOILUTSequence"):
            desc = list(ds.VOILUTSequence[0].LUTDescriptor)
            n_entries, first = int(desc[0]) or 2**16, int(desc[1])
            full = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds, index=0, prefer_lut=True)
            lo, hi = float(full.min()), float(full.max())
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            with np.errstate(all="ignore"):  # SIGMOID on the probe overflows exp() harmlessly
                ends = apply_windowing(np.array([-_PROBE, _PROBE]), ds, index=0)
            lo, hi = float(np.min(ends)), float(np.max(ends))
        else:
            return None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError):
        return None  # malformed VOI attributes: fall back to the full data range
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) and hi > lo else None


def _apply_voi(values: np.ndarray, ds) -> np.ndarray:
    """VOI LUT (preferred) or window centre/width applied to modality values (one band)."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    if ds.get("VOILUTSequence"):
        desc = list(ds.VOILUTSequence[0].LUTDescriptor)
        n_entries, first = int(desc[0]) or 2**16, int(desc[1])
        # Clip first: pydicom indexes with the LUT's own dtype, so out-of-table values would wrap.
        idx = np.clip(np.rint(values), first, first + n_entries - 1).astype(np.int64)
        out = apply_voi_lut(idx, ds, index=0, prefer_lut=True)
    else:
        with np.errstate(all="ignore"):
            out = apply_windowing(values, ds, index=0)
    return out.astype(np.float64)


def _rescale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."
