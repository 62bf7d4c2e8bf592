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

    values = apply_modality_lut(arr, ds).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    try:
        voi = _apply_voi(values, ds)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError):
        voi = None  # malformed VOI attributes: fall back to the full data range
    if voi is not None:
        values, lo, hi = voi
    out = _rescale_to_uint8(values, lo, hi)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _apply_voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float] | None:
    """VOI LUT (preferred) or window centre/width, with the transform's output range for scaling."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    if ds.get("VOILUTSequence"):
        desc = list(ds.VOILUTSequence[0].LUTDescriptor)
        n_entries, first = int(desc[0]) or 2**16, int(desc[1])
        # Clip first: pydicom indexes with the LUT's own dtype, so out-of-table values would wrap.
        idx = np.clip(np.rint(values), first, first + n_entries - 1).astype(np.int64)
        out = apply_voi_lut(idx, ds, index=0, prefer_lut=True)
        full = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds, index=0, prefer_lut=True)
        lo, hi = float(full.min()), float(full.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        with np.errstate(all="ignore"):  # SIGMOID on the probe overflows exp() harmlessly
            out = apply_windowing(values, ds, index=0)
            ends = apply_windowing(np.array([-_PROBE, _PROBE]), ds, index=0)
        lo, hi = float(np.min(ends)), float(np.max(ends))
    else:
        return None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return None
    return out.astype(np.float64), lo, hi


def _rescale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."
