"""The DICOM headers of a study's views, read without pixel data, so reports can reference their source images."""

from __future__ import annotations

import os
from collections.abc import Iterable
from io import BytesIO
from typing import Any

_DICOM_MAGIC = b"DICM"


def is_dicom_bytes(data: bytes) -> bool:
    """A DICOM Part-10 file (preamble + DICM), or a bare dataset starting with a group 0002/0008 tag."""
    return (len(data) >= 132 and data[128:132] == _DICOM_MAGIC) or data[:2] in (b"\x02\x00", b"\x08\x00")


def headers_from_bytes(blobs: Iterable[bytes]) -> tuple[Any, ...]:
    """Headers of the DICOM uploads among `blobs` (PNG/JPEG and unreadable ones are skipped: the image decoder
    reports those)."""
    out = []
    for data in blobs:
        if is_dicom_bytes(data):
            header = _read(BytesIO(data), force=data[128:132] != _DICOM_MAGIC)
            if header is not None:
                out.append(header)
    return tuple(out)


def headers_from_files(paths: Iterable[str | os.PathLike]) -> tuple[Any, ...]:
    """Headers of the DICOM files among `paths` (by suffix or magic)."""
    from echocxr.data.images import DICOM_SUFFIXES

    out = []
    for path in paths:
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                head = f.read(132)
        except OSError:
            continue
        if path.lower().endswith(DICOM_SUFFIXES) or is_dicom_bytes(head):
            header = _read(path, force=False)
            if header is not None:
                out.append(header)
    return tuple(out)


def without_pixels(ds: Any) -> Any:
    """A copy of a dataset's header, pixel data (and other bulk) dropped: what a report may keep of an image."""
    from copy import deepcopy

    from pydicom.dataset import Dataset

    header = Dataset()
    for elem in ds:
        if elem.tag.group != 0x7FE0 and elem.keyword not in ("PixelData", "FloatPixelData", "OverlayData"):
            header.add(deepcopy(elem))
    if getattr(ds, "file_meta", None) is not None:
        header.file_meta = deepcopy(ds.file_meta)
    return header


def _read(source: Any, force: bool) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=force)
    except Exception:  # noqa: BLE001 - any unreadable header: the image decoder says why, in its own words
        return None
    return ds if "SOPInstanceUID" in ds and "StudyInstanceUID" in ds else None
